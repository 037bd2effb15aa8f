"""Measurements behind the papers' analyses (level statistics, level-wise AP, gradient density)."""
