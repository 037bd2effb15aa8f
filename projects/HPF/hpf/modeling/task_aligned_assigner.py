"""Task-aligned assignment of TOOD (Feng et al., "TOOD: Task-aligned One-stage Object
Detection", ICCV 2021, Sec. 3.2), following mmdetection's ``TaskAlignedAssigner`` and the
target normalisation of its ``TOODHead``.
"""

from typing import NamedTuple, Sequence, Union

import torch
from detectron2.structures import Boxes, pairwise_iou

from .matcher import resolve_multiple_matches

__all__ = ["TaskAlignedMatch", "TaskAlignedMatcher", "normalized_alignment_targets"]


class TaskAlignedMatch(NamedTuple):
    """The assignment of one image's anchors."""

    matched_idxs: torch.Tensor  # [A] int64: index of the matched ground truth, -1 = background
    alignment_metrics: torch.Tensor  # [A]: t = s^alpha u^beta of the matched pair, 0 elsewhere
    matched_ious: torch.Tensor  # [A]: IoU of the predicted box with its ground truth, 0 elsewhere


class TaskAlignedMatcher:
    """
    For every ground truth g and anchor i, the alignment metric (TOOD Eq. 5)
    ``t = s^alpha * u^beta``, with s the predicted score of g's class at i and u the IoU of
    the box predicted at i with g. Then:

    1. the ``topk`` anchors of largest t (over all levels together) are g's candidates;
    2. a candidate is positive for g when ``t > 0`` and its anchor centre lies inside g with
       ``min(l, t, r, b) > center_margin`` (0.01 px in the reference);
    3. an anchor positive for several ground truths goes to the one whose IoU with the
       predicted box is highest; on equal IoUs the lowest ground-truth index wins (the
       reference's ``argmax``, first maximum).

    Call: ``matcher(anchors, pred_scores, pred_boxes, gt_boxes, gt_classes)``

    Args (call):
        anchors: ``[A, 4]`` XYXY tensor or :class:`Boxes`, or a list of them per level
            (concatenated): only their centres are used.
        pred_scores: ``[A, C]`` predicted probabilities (detached here).
        pred_boxes: ``[A, 4]`` predicted XYXY boxes in image pixels (detached here).
        gt_boxes: ``[G, 4]`` XYXY tensor or :class:`Boxes`.
        gt_classes: ``[G]`` int64 class of each ground truth.

    Returns:
        :class:`TaskAlignedMatch`.

    Args (constructor):
        topk: candidates per ground truth (13 in the reference).
        alpha, beta: exponents of the score and the IoU in t (1 and 6 in the reference).
        center_margin: how far inside the ground truth an anchor centre must lie.
    """

    def __init__(self, topk: int = 13, alpha: float = 1.0, beta: float = 6.0,
                 center_margin: float = 0.01):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.topk = int(topk)
        self.alpha, self.beta = float(alpha), float(beta)
        self.center_margin = float(center_margin)

    def __repr__(self):
        return (f"TaskAlignedMatcher(topk={self.topk}, alpha={self.alpha}, beta={self.beta}, "
                f"center_margin={self.center_margin})")

    @torch.no_grad()
    def __call__(self, anchors, pred_scores, pred_boxes, gt_boxes, gt_classes) -> TaskAlignedMatch:
        anchors = _as_boxes_tensor(anchors, "anchors")
        pred_boxes = _as_boxes_tensor(pred_boxes, "pred_boxes").float()
        gt = _as_boxes_tensor(gt_boxes, "gt_boxes").to(anchors.device, torch.float32)
        num_anchors, num_gt = anchors.shape[0], gt.shape[0]
        if pred_scores.dim() != 2 or pred_scores.shape[0] != num_anchors:
            raise ValueError(f"pred_scores must be [A, C] with A = {num_anchors} anchors, got "
                             f"shape {tuple(pred_scores.shape)}")
        if pred_boxes.shape[0] != num_anchors:
            raise ValueError(f"pred_boxes has {pred_boxes.shape[0]} rows for {num_anchors} "
                             "anchors")
        if gt_classes.shape != (num_gt,):
            raise ValueError(f"gt_classes must be [{num_gt}] (one per ground truth), got shape "
                             f"{tuple(gt_classes.shape)}")

        device = anchors.device
        matched_idxs = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
        metrics = torch.zeros(num_anchors, device=device)
        ious = torch.zeros(num_anchors, device=device)
        if num_gt == 0 or num_anchors == 0:
            return TaskAlignedMatch(matched_idxs, metrics, ious)

        # [G, A] IoU of every predicted box with every ground truth, and the metric t (Eq. 5).
        overlaps = pairwise_iou(Boxes(gt), Boxes(pred_boxes)).nan_to_num_(0.0)
        scores = pred_scores.detach().float().t()[gt_classes.to(device)]  # [G, A]
        alignment = scores.pow(self.alpha) * overlaps.pow(self.beta)

        # 1. top-k candidates per ground truth over all levels.
        k = min(self.topk, num_anchors)
        cand_metrics, cand = alignment.topk(k, dim=1)  # [G, k]
        is_pos = cand_metrics > 0

        # 2. candidate anchor centre inside the ground truth (by more than center_margin).
        cx = (anchors[:, 0] + anchors[:, 2]) / 2
        cy = (anchors[:, 1] + anchors[:, 3]) / 2
        ccx, ccy = cx[cand], cy[cand]
        inside = torch.minimum(
            torch.minimum(ccx - gt[:, 0:1], ccy - gt[:, 1:2]),
            torch.minimum(gt[:, 2:3] - ccx, gt[:, 3:4] - ccy),
        )
        is_pos &= inside > self.center_margin

        # 3. anchors positive for several ground truths: highest IoU, lowest index on ties.
        first, best = resolve_multiple_matches(cand, is_pos, overlaps.gather(1, cand),
                                               num_anchors)
        fg = first < num_gt
        matched_idxs[fg] = first[fg]
        metrics[fg] = alignment[first[fg], fg.nonzero().squeeze(1)]
        ious[fg] = best[fg]
        return TaskAlignedMatch(matched_idxs, metrics, ious)


def normalized_alignment_targets(match: TaskAlignedMatch, eps: float = 1e-7) -> torch.Tensor:
    """
    The classification (and box-weight) targets of TAL: per ground truth g, the metrics of its
    positives rescaled so that their maximum equals the largest IoU among them,
    ``t_hat = t / (max_g t + eps) * max_g u`` (TOOD Sec. 3.3.1; ``eps`` 1e-7 as the reference).
    0 for background anchors.

    Args:
        match: one image's :class:`TaskAlignedMatch`.

    Returns:
        ``[A]`` float tensor.
    """
    idx, t, u = match.matched_idxs, match.alignment_metrics, match.matched_ious
    targets = torch.zeros_like(t)
    fg = idx >= 0
    if not fg.any():
        return targets
    num_gt = int(idx.max()) + 1
    max_t = t.new_zeros(num_gt).scatter_reduce_(0, idx[fg], t[fg], reduce="amax")
    max_u = u.new_zeros(num_gt).scatter_reduce_(0, idx[fg], u[fg], reduce="amax")
    targets[fg] = t[fg] / (max_t[idx[fg]] + eps) * max_u[idx[fg]]
    return targets


def _as_boxes_tensor(boxes: Union[torch.Tensor, Boxes, Sequence], name: str) -> torch.Tensor:
    """An ``[N, 4]`` tensor from a tensor, :class:`Boxes` or a list of them (concatenated)."""
    if isinstance(boxes, (list, tuple)):
        parts = [_as_boxes_tensor(b, name) for b in boxes]
        return torch.cat(parts) if parts else torch.zeros(0, 4)
    tensor = boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes)
    if tensor.numel() == 0:
        tensor = tensor.reshape(0, 4)
    if tensor.dim() != 2 or tensor.shape[-1] != 4:
        raise ValueError(f"{name} must be [N, 4] XYXY boxes, got shape {tuple(tensor.shape)}")
    return tensor
