"""Online hard example mining (OHEM) for a dense detector's sigmoid classifier: the OHEM row
of the GHM paper's Table 4 (positives and the highest-loss negatives at 1:3)."""

import torch
import torch.nn.functional as F

from .contract import ClassificationLoss
from .utils import check_finite_all

__all__ = ["OHEMLoss"]


def _join_levels(tensors, name, anchor_dim):
    """Per-level tensors joined along their anchor dimension (1 for ``[B, A_l, ...]``)."""
    dims = {t.dim() for t in tensors}
    if len(dims) != 1:
        raise ValueError(f"{name} mixes per-image and flat levels: dims {sorted(dims)}")
    return torch.cat(list(tensors), dim=anchor_dim)


class OHEMLoss(ClassificationLoss):
    """
    Sigmoid cross entropy on every positive anchor and, per image, on the
    ``neg_pos_ratio x (its positives)`` negative anchors with the largest loss; every other
    anchor is dropped. An anchor's loss is its BCE summed over the classes; the sum over the
    kept anchors is divided by ``normalizer`` (the detector's count of positives, as SSD's
    hard negative mining). An image without positives keeps no negatives.

    A :class:`ClassificationLoss` that needs per-anchor ``valid`` masks (``[B, A_l]`` /
    ``[A_l]``): their False anchors are neither positive nor negative. The focal-loss paper's
    OHEM also ran NMS over the examples and capped the examples per image; neither is done here.

    Args:
        neg_pos_ratio: negatives kept per positive (3 = the 1:3 of GHM Table 4).
        loss_weight: multiplies the loss.
    """

    def __init__(self, neg_pos_ratio=3.0, loss_weight=1.0):
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.neg_pos_ratio, self.loss_weight = float(neg_pos_ratio), float(loss_weight)

    def extra_repr(self):
        return f"neg_pos_ratio={self.neg_pos_ratio}, loss_weight={self.loss_weight}"

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        flat = logits_per_level[0].dim() == 2  # [A_l, C]: one image
        anchor_dim = 0 if flat else 1
        logits = _join_levels(logits_per_level, "logits", anchor_dim).float()
        check_finite_all("logits", logits_per_level, logits)
        targets = _join_levels(targets_per_level, "targets", anchor_dim).float()
        if targets.shape != logits.shape:
            raise ValueError(f"targets have shape {tuple(targets.shape)} but logits have "
                             f"shape {tuple(logits.shape)}")
        if flat:
            logits, targets = logits.unsqueeze(0), targets.unsqueeze(0)
        anchor_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
        with torch.no_grad():
            valid = torch.ones_like(anchor_loss, dtype=torch.bool)
            if valid_per_level is not None:
                valid = _join_levels(valid_per_level, "valid", anchor_dim)
                valid = valid.unsqueeze(0) if flat else valid
                if valid.shape != anchor_loss.shape:
                    raise ValueError(f"valid masks are per anchor: expected shape "
                                     f"{tuple(anchor_loss.shape)}, got {tuple(valid.shape)}")
            positive = (targets > 0).any(-1) & valid
            negative = valid & ~positive
            num_neg = (positive.sum(1) * self.neg_pos_ratio).floor().long()
            # Rank of each negative by loss within its image (0 = hardest); non-negatives last.
            scores = torch.where(negative, anchor_loss.detach(), float("-inf"))
            order = scores.argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                          .expand_as(order).contiguous())
            keep = positive | (negative & (rank < num_neg.unsqueeze(1)))
        loss = torch.where(keep, anchor_loss, 0.0).sum()
        return self.loss_weight * loss / normalizer
