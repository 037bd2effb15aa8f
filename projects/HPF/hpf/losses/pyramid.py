"""
Classification and box losses over pyramid levels: the contract detectors call.

Every classification loss here (and ``ProgressiveFocalLoss`` & co.) is a module with

    forward(logits_per_level, targets_per_level, normalizer, valid_per_level=None) -> scalar

one ``[N_l, C]`` (or ``[B, A_l, C]``) tensor per level, so a detector swaps its classification
loss in one config line and losses that need the level structure (HPF) get it. Targets are
one-hot rows (background = zeros), or IoU-quality scores in [0, 1] for the losses whose
``uses_quality_targets`` is True. ``normalizer`` is the detector's count of positives.
"""
import torch
import torch.nn as nn

from .focal import sigmoid_focal_loss
from .ghm import GHMC, GHMR
from .quality_focal import quality_focal_loss, varifocal_loss
from .sampling_free import sampling_free_ce_loss

__all__ = [
    "FocalLoss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "SamplingFreeCELoss",
    "GHMCLoss",
    "GHMRLoss",
]


def _masked(loss, valid):
    if valid is None:
        return loss
    valid = valid if valid.dim() == loss.dim() else valid.unsqueeze(-1)
    return torch.where(valid, loss, 0.0)


class _SummedOverLevels(nn.Module):
    """Sum of an element-wise loss over all levels and entries, divided by the normalizer."""

    uses_quality_targets = False

    def elementwise(self, logits, targets):
        raise NotImplementedError

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        valid_per_level = valid_per_level or [None] * len(logits_per_level)
        total = sum(
            _masked(self.elementwise(x, t), v).sum()
            for x, t, v in zip(logits_per_level, targets_per_level, valid_per_level)
        )
        return total / normalizer


class FocalLoss(_SummedOverLevels):
    """Sigmoid focal loss (HPF Eq. 1) with constant alpha and gamma: the detectors' default."""

    def __init__(self, alpha=0.25, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def elementwise(self, logits, targets):
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma)


class QualityFocalLoss(_SummedOverLevels):
    """QFL (GFL): targets are IoU-quality scores of the assigned class."""

    uses_quality_targets = True

    def __init__(self, beta=2.0):
        super().__init__()
        self.beta = beta

    def elementwise(self, logits, targets):
        return quality_focal_loss(logits, targets, self.beta)


class VarifocalLoss(_SummedOverLevels):
    """VFL (VarifocalNet): targets are IoU-quality scores of the assigned class."""

    uses_quality_targets = True

    def __init__(self, alpha=0.75, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def elementwise(self, logits, targets):
        return varifocal_loss(logits, targets, self.alpha, self.gamma)


class SamplingFreeCELoss(nn.Module):
    """Sampling-Free classification: sigmoid CE over every valid sample and class, no
    focal term, divided by the number of positives (conference paper, Sec. 3)."""

    uses_quality_targets = False

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        valid_per_level = valid_per_level or [None] * len(logits_per_level)
        return sum(
            sampling_free_ce_loss(x, t, normalizer, v)
            for x, t, v in zip(logits_per_level, targets_per_level, valid_per_level)
        )


class GHMCLoss(nn.Module):
    """
    GHM-C over pyramid levels. ``per_level=True`` calls one ``GHMC`` once per level and sums,
    as the official code does (its running bin counts are shared by the levels and updated
    once per level); ``False`` harmonises all levels at once. GHM-C normalises by its own
    count of valid samples: ``normalizer`` is not used.
    """

    uses_quality_targets = False

    def __init__(self, bins=30, momentum=0.75, per_level=True, loss_weight=1.0):
        super().__init__()
        self.ghmc = GHMC(bins=bins, momentum=momentum)
        self.per_level, self.loss_weight = per_level, loss_weight

    def forward(self, logits_per_level, targets_per_level, normalizer=None, valid_per_level=None):
        return self.loss_weight * _harmonised(
            self.ghmc, self.per_level, logits_per_level, targets_per_level, valid_per_level
        )


class GHMRLoss(nn.Module):
    """
    GHM-R box loss over pyramid levels on the box deltas of the positives (``[P_l, 4]`` per
    level), ``loss_weight`` 10 as the official config; ``per_level`` as in :class:`GHMCLoss`.
    """

    def __init__(self, mu=0.02, bins=10, momentum=0.7, per_level=True, loss_weight=10.0):
        super().__init__()
        self.ghmr = GHMR(mu=mu, bins=bins, momentum=momentum)
        self.per_level, self.loss_weight = per_level, loss_weight

    def forward(self, pred_deltas_per_level, target_deltas_per_level):
        return self.loss_weight * _harmonised(
            self.ghmr, self.per_level, pred_deltas_per_level, target_deltas_per_level, None
        )


def _harmonised(module, per_level, inputs, targets, valid):
    if per_level:
        valid = valid or [None] * len(inputs)
        return sum(module(x, t, v) for x, t, v in zip(inputs, targets, valid))
    # All levels at once: flatten every level to [-1, K] and join them.
    flat = lambda xs: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])  # noqa: E731
    joined_valid = None
    if valid is not None and None not in valid:
        joined_valid = torch.cat([
            v.reshape(-1) if v.dim() < x.dim() else v.reshape(-1, x.shape[-1])
            for v, x in zip(valid, inputs)
        ])
    return module(flat(inputs), flat(targets), joined_valid)
