"""Sigmoid focal loss, Eq. 1 of the HPF paper (Lin et al.'s focal loss), for 0/1 targets."""

import torch
import torch.nn.functional as F

from .utils import check_finite, check_same_shape, reduce_loss


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
