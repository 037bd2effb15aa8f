"""
Distribution Focal Loss (GFL, Li et al., NeurIPS 2020): the box side of Generalized
Focal Loss. A box side is predicted as a discrete distribution over the bins 0, 1, ..., n; for a
continuous target y between the bins y_i <= y < y_{i+1} = y_i + 1,

    DFL(S, y) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1}),

with S the softmax of the n + 1 logits: the cross-entropy against the two-bin distribution whose
expectation is y.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import check_finite, reduce_loss

__all__ = ["DistributionFocalLoss", "distribution_focal_loss"]


def distribution_focal_loss(logits, targets, reduction="none"):
    """
    Args:
        logits: ``[N, n + 1]`` logits of the distributions over the bins 0..n (before softmax).
        targets: ``[N]`` continuous targets in ``[0, n]`` (in bins).
        reduction: "none" | "mean" | "sum".

    Returns:
        Tensor: ``[N]`` losses (float32) with ``reduction="none"``, else a scalar.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, n + 1] with n >= 1, got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)} but logits has shape "
                         f"{tuple(logits.shape)}; targets must be [N]")
    check_finite("logits", logits)
    n = logits.shape[1] - 1
    targets = targets.float()
    if targets.numel() and not bool(((targets >= 0) & (targets <= n)).all()):
        raise ValueError(f"targets must lie in [0, {n}] (the bins of the logits), got values in "
                         f"[{targets.min().item()}, {targets.max().item()}]")
    # A target on the last bin n takes the pair (n - 1, n) with weights (0, 1).
    left = targets.floor().long().clamp(max=n - 1)
    weight_right = targets - left.float()
    log_probs = F.log_softmax(logits.float(), dim=1)
    log_left = log_probs.gather(1, left[:, None]).squeeze(1)
    log_right = log_probs.gather(1, left[:, None] + 1).squeeze(1)
    loss = -((1 - weight_right) * log_left + weight_right * log_right)
    return reduce_loss(loss, reduction)


class DistributionFocalLoss(nn.Module):
    """:func:`distribution_focal_loss` as a module, with optional per-row weights.

    Args:
        reduction: "none" | "mean" | "sum" of the (weighted) per-row losses.
    """

    def __init__(self, reduction="sum"):
        super().__init__()
        reduce_loss(torch.zeros(1), reduction)  # names a bad reduction at construction
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"

    def forward(self, logits, targets, weight=None):
        """
        Args:
            logits: ``[N, n + 1]`` logits.
            targets: ``[N]`` targets in ``[0, n]``.
            weight: None or ``[N]`` weights of the rows.
        """
        loss = distribution_focal_loss(logits, targets)
        if weight is not None:
            if weight.shape != loss.shape:
                raise ValueError(f"weight has shape {tuple(weight.shape)}, expected "
                                 f"{tuple(loss.shape)} (one per row of logits)")
            loss = loss * weight
        return reduce_loss(loss, self.reduction)
