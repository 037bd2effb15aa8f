"""Sampling-Free ingredients (Chen et al., conference version, Eq. 9-10 and Table 2) and its
classification loss; guided loss scaling (Eq. 7-8) is in guided_scaling.py."""

import math

import torch
import torch.nn.functional as F

from .utils import as_valid_mask, check_finite, check_same_shape


def optimal_prior(num_foreground, num_total, num_classes):
    """pi = N_f / (N * C) (Eq. 9-10): the prior minimising the initial sigmoid CE."""
    if num_total <= 0 or num_classes <= 0:
        raise ValueError(
            f"num_total and num_classes must be > 0, got {num_total} and {num_classes}"
        )
    if not 0 < num_foreground < num_total * num_classes:
        raise ValueError(
            f"num_foreground must be in (0, num_total * num_classes), got {num_foreground}"
        )
    return num_foreground / (num_total * num_classes)


def prior_bias(pi):
    """Classifier bias b = -log((1 - pi) / pi) (Eq. 10), so that sigmoid(b) = pi."""
    if torch.is_tensor(pi):
        return -torch.log((1 - pi) / pi)
    if not 0 < pi < 1:
        raise ValueError(f"pi must be in (0, 1), got {pi}")
    return -math.log((1 - pi) / pi)


def adaptive_threshold(num_foreground, num_total):
    """Inference score threshold theta = N_f / N (Table 2)."""
    if num_total <= 0:
        raise ValueError(f"num_total must be > 0, got {num_total}")
    if num_foreground < 0:
        raise ValueError(f"num_foreground must be >= 0, got {num_foreground}")
    return num_foreground / num_total


def sampling_free_ce_loss(logits, targets, normalizer=None, valid=None):
    """Sampling-Free classification loss: sigmoid CE summed over all valid samples and classes
    (no sampling, no focal term, no alpha), divided by `normalizer`.

    normalizer=None uses this process's number of valid positive entries (target > 0), at
    least 1, like the official one-stage code; pass the global count for a DDP-exact form.
    """
    check_same_shape("targets", targets, "logits", logits)
    check_finite("logits", logits)
    x, t = logits.float(), targets.float()
    valid = as_valid_mask(valid, x)
    if valid is None:
        total = F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    else:
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        total = torch.where(valid, loss, 0.0).sum()
    if normalizer is None:
        positives = t > 0 if valid is None else (t > 0) & valid
        normalizer = positives.sum().clamp_min(1).float()
    elif not torch.is_tensor(normalizer) and normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    return total / normalizer
