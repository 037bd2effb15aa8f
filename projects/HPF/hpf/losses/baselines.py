"""
The baselines HPF builds on: the sigmoid focal loss (Lin et al.; HPF Eq. 1), Quality Focal Loss
(GFL) and Varifocal Loss (VarifocalNet), as functions and as pyramid-level classification losses.

QFL / VFL take IoU-quality targets in [0, 1] (0 = negative); their modulating factors are not
detached, as in the official QFL / VFL code. The progressive forms are in hpf.py.
"""

import torch
import torch.nn.functional as F

from .contract import ClassificationLoss
from .utils import check_finite, check_same_shape, reduce_loss

__all__ = [
    "FocalLoss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
]


@torch.no_grad()
def binary_focal_parts(logits, targets):
    """(sign, -log p_t, log(1 - p_t)) for 0/1 targets, with sign = 1 - 2y.

    -log p_t = softplus(sign * x) is the BCE of each entry (at positives: -log sigmoid(x), the
    HPF statistic) and log(1 - p_t) = sign * x - softplus(sign * x), both without cancellation.
    """
    sign = torch.rsub(targets, 1, alpha=2)
    signed = logits * sign
    neg_log_pt = F.softplus(signed)
    return sign, neg_log_pt, signed.sub_(neg_log_pt)


class _BinaryFocal(torch.autograd.Function):
    """-alpha_t (1 - p_t)^gamma log p_t with a hand-written backward.

    (1 - p_t)^gamma = exp(gamma log(1 - p_t)): one exp for any gamma (a non-integer pow costs a
    log and an exp forward and again backward), and only three tensors kept for backward.
    """

    @staticmethod
    def forward(ctx, logits, sign, neg_log_pt, log_one_minus_pt, alpha_t, gamma):
        weight = (log_one_minus_pt * gamma).exp_()
        if alpha_t is not None:
            weight.mul_(alpha_t)
        ctx.gamma = gamma
        ctx.save_for_backward(sign, neg_log_pt, weight)
        return weight * neg_log_pt

    @staticmethod
    def backward(ctx, grad):
        sign, ce, weight = ctx.saved_tensors
        # With z = (2y - 1) x: dL/dz = -alpha_t (1 - p_t)^gamma (gamma p_t (-log p_t) + 1 - p_t)
        # and dz/dx = -sign.
        p_t = torch.exp(-ce)
        dx = p_t.mul(ce).mul_(ctx.gamma).sub_(p_t).add_(1).mul_(weight).mul_(sign).mul_(grad)
        return dx, None, None, None, None, None


def focal_terms(logits, targets, alpha, gamma, parts=None):
    """Element-wise focal loss on float32 `logits` and 0/1 `targets` (no checks).

    `alpha`, `gamma`: floats or tensors broadcastable to the logits; a float alpha < 0 turns
    the alpha_t weighting off (detectron2's convention). `parts` may pass
    binary_focal_parts(logits, targets) when the caller already has them.
    """
    parts = binary_focal_parts(logits, targets) if parts is None else parts
    alpha_t = None
    if torch.is_tensor(alpha) or alpha >= 0:
        alpha_t = targets * (2 * alpha - 1) + (1 - alpha)  # alpha for y=1, 1-alpha for y=0
    return _BinaryFocal.apply(logits, *parts, alpha_t, gamma)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """Focal loss (HPF Eq. 1) of `[N, C]` logits against 0/1 targets, computed in float32.

    `alpha` and `gamma` may be floats or 0-dim tensors (no gradient flows into them). Targets
    must be 0 or 1 as in Eq. 1 (use quality_focal_loss for soft targets). Raises
    FloatingPointError on NaN/inf logits and ValueError on a shape mismatch.
    """
    check_same_shape("targets", targets, "logits", logits)
    check_finite("logits", logits)
    loss = focal_terms(logits.float(), targets.float(), alpha, gamma)
    return reduce_loss(loss, reduction)


def quality_focal_terms(logits, q, gamma, alpha=None, log_terms=None):
    """-|q - p|^gamma ((1 - alpha)(1 - q) log(1 - p) + alpha q log p)  (HPF Eq. 6).

    With alpha=None both terms have weight 1: plain QFL with beta = gamma (GFL's form).
    `log_terms` may pass (-log(1 - p), -log p) when the caller already has them.
    """
    modulator = (q - torch.sigmoid(logits)).abs().pow(gamma)
    if alpha is None:
        return F.binary_cross_entropy_with_logits(logits, q, reduction="none") * modulator
    neg_log_1mp, neg_log_p = log_terms if log_terms is not None else neg_log_probs(logits)
    return modulator * ((1 - alpha) * (1 - q) * neg_log_1mp + alpha * q * neg_log_p)


def neg_log_probs(logits):
    """(-log(1 - p), -log p) of sigmoid logits, without cancellation."""
    neg_log_1mp = F.softplus(logits)  # -log(1 - p)
    return neg_log_1mp, neg_log_1mp - logits  # -log p = softplus(-x) = softplus(x) - x


def varifocal_terms(logits, q, alpha, gamma, ce=None):
    """q * BCE(x, q) for q > 0 and alpha p^gamma BCE(x, 0) for q = 0 (VFL; HPF Eq. 7)."""
    if ce is None:
        ce = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
    # Where q = 0, BCE = softplus(x) and log p = x - softplus(x): p^gamma = exp(gamma (x - BCE)),
    # one exp instead of a sigmoid and a pow (log + exp) for any gamma. The clamp keeps the
    # unused q > 0 entries from overflowing (inf * 0 would give NaN gradients).
    negative_weight = alpha * torch.exp((gamma * (logits - ce)).clamp_max(0.0))
    return ce * torch.where(q > 0, q, negative_weight)


def _checked(logits, score_targets):
    check_same_shape("score_targets", score_targets, "logits", logits)
    check_finite("logits", logits)
    return logits.float(), score_targets.float()


def quality_focal_loss(logits, score_targets, beta=2.0, reduction="none"):
    """Quality Focal Loss: -|q - p|^beta ((1 - q) log(1 - p) + q log p)."""
    x, q = _checked(logits, score_targets)
    return reduce_loss(quality_focal_terms(x, q, beta), reduction)


def varifocal_loss(logits, score_targets, alpha=0.75, gamma=2.0, reduction="none"):
    """Varifocal Loss (IoU-weighted positives, focal-weighted negatives)."""
    x, q = _checked(logits, score_targets)
    return reduce_loss(varifocal_terms(x, q, alpha, gamma), reduction)


def _masked(loss, valid):
    if valid is None:
        return loss
    valid = valid if valid.dim() == loss.dim() else valid.unsqueeze(-1)
    return torch.where(valid, loss, 0.0)


class _SummedOverLevels(ClassificationLoss):
    """Sum of an element-wise loss over all levels and valid entries, divided by the
    normalizer."""

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
    """Sigmoid focal loss (HPF Eq. 1) with constant alpha and gamma: the detectors' default.

    Args:
        alpha: weight of the positives (1 - alpha for the negatives); < 0 turns it off.
        gamma: focusing parameter.
    """

    def __init__(self, alpha=0.25, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"

    def elementwise(self, logits, targets):
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma)


class QualityFocalLoss(_SummedOverLevels):
    """QFL (GFL): targets are IoU-quality scores of the assigned class.

    Args:
        beta: exponent of the modulating factor |q - p|.
    """

    uses_quality_targets = True

    def __init__(self, beta=2.0):
        super().__init__()
        self.beta = beta

    def elementwise(self, logits, targets):
        return quality_focal_loss(logits, targets, self.beta)


class VarifocalLoss(_SummedOverLevels):
    """VFL (VarifocalNet): targets are IoU-quality scores of the assigned class.

    Args:
        alpha: weight of the negatives.
        gamma: exponent of p in the negatives' factor.
    """

    uses_quality_targets = True

    def __init__(self, alpha=0.75, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def elementwise(self, logits, targets):
        return varifocal_loss(logits, targets, self.alpha, self.gamma)
