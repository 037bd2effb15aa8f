"""Adaptive Training Sample Selection (ATSS) anchor assignment.

Zhang, Chi, Yao, Lei, Li: "Bridging the Gap Between Anchor-based and Anchor-free Detection
via Adaptive Training Sample Selection", CVPR 2020 (arXiv:1912.02424), Algorithm 1. The
behaviour follows mmdetection's ``ATSSAssigner`` (mmdet/core/bbox/assigners/atss_assigner.py
in zimoqingfeng/UMOP, the official HPF code; same algorithm in open-mmlab/mmdetection
mmdet/models/task_modules/assigners/atss_assigner.py), with ``ignore_iof_thr=-1`` (no ignored
boxes) and without the DDOD ``alpha`` cost.
"""

from typing import List, Sequence, Tuple, Union

import torch
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou

__all__ = ["ATSSMatcher"]

BoxesLike = Union[torch.Tensor, Boxes]


def resolve_multiple_matches(cand, is_pos, cand_ious, num_anchors):
    """
    The ground truth of each anchor from per-ground-truth candidates: an anchor positive for
    several ground truths takes the one of highest IoU, the lowest index on ties (the
    reference assigners' rule).

    Args:
        cand: ``[G, k]`` candidate anchor indices per ground truth.
        is_pos: ``[G, k]`` which candidates are positive.
        cand_ious: ``[G, k]`` their IoUs with the ground truth.
        num_anchors: the number of anchors.

    Returns:
        ``[num_anchors]`` ground-truth index (``G`` where none) and its IoU (-inf where none).
    """
    num_gt, device = cand.shape[0], cand.device
    gt_idx = torch.arange(num_gt, device=device)[:, None].expand_as(cand)
    pos_anchor, pos_gt, pos_iou = cand[is_pos], gt_idx[is_pos], cand_ious[is_pos]
    best = torch.full((num_anchors,), float("-inf"), dtype=cand_ious.dtype, device=device)
    best.scatter_reduce_(0, pos_anchor, pos_iou, reduce="amax")
    winner = pos_iou == best[pos_anchor]
    first = torch.full((num_anchors,), num_gt, dtype=torch.long, device=device)
    first.scatter_reduce_(0, pos_anchor[winner], pos_gt[winner], reduce="amin")
    return first, best


def _as_tensor(boxes: BoxesLike) -> torch.Tensor:
    tensor = boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes)
    if tensor.numel() == 0:
        tensor = tensor.reshape(0, 4)
    if tensor.dim() != 2 or tensor.shape[-1] != 4:
        raise ValueError(f"ATSSMatcher expects [N, 4] XYXY boxes, got shape {tuple(tensor.shape)}")
    return tensor


def _centers(boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return (boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0


class ATSSMatcher:
    """ATSS assignment of anchors (all FPN levels of one image) to ground-truth boxes.

    For every ground truth g:

    1. on each level l, the ``k_l = min(topk, N_l)`` anchors whose centres are nearest (L2) to
       the centre of g are its candidates (``sum_l k_l`` candidates, 45 for 5 levels);
    2. ``thr_g = mean + std`` of the candidates' IoUs with g, where std is the unbiased
       (Bessel-corrected, ``torch.std``) standard deviation, as in the reference;
    3. a candidate is positive for g when ``IoU >= thr_g`` **and** its centre lies inside g
       with ``min(l, t, r, b) > center_margin`` (0.01 px in the reference);
    4. an anchor positive for several ground truths goes to the one with the highest IoU.

    Anchors that are positive for no ground truth are background (-1). There is no "ignore"
    label (the reference's ``ignore_iof_thr`` is -1 in the ATSS/HPF configs).

    Tie-breaking:

    * Equal centre distances at the k-th place of a level (``stable_ties=False``, default):
      the candidates are ``torch.topk(distances, k, largest=False)`` with the distances
      computed with the reference's arithmetic (float32 ``sqrt(dx*dx + dy*dy)``), so the tie
      choice is whatever torch's kernel does, which is the reference's own behaviour. We
      take the top-k along the rows of a ``[G, N_l]`` matrix, the reference along the
      columns of ``[N_l, G]``; on CPU (torch 2.13) both pick the same indices, ties included.
      It is not a fixed rule: on CPU it depends on ``N_l``, and CUDA may choose differently.
      Exact ties happen with integer box coordinates on the regular anchor grid (e.g. a box
      centre half way between two anchor columns); with resized COCO boxes they are rare.
      ``stable_ties=True``: among equally distant anchors the one with the lower index
      (row-major position in the level, as produced by ``DefaultAnchorGenerator``) is taken
      first, i.e. the candidate set of a stable sort by distance. Deterministic on every
      device and torch version; differs from the reference only where ties occur.
    * Equal IoUs across ground truths (e.g. duplicate boxes): the ground truth with the lowest
      index wins, like the reference's ``argmax`` over a ``[A, G]`` matrix holding the IoU of
      positive pairs and -INF elsewhere (first maximum).
    * ``IoU == thr_g`` counts as positive (``>=``).

    Edge cases (as the reference): zero ground truths -> all -1; levels without anchors are
    skipped; if an image has exactly one candidate in total (one anchor over all levels), the
    unbiased std is NaN and nothing is positive. IoUs are detectron2's
    (``matched_pairwise_iou``, the same arithmetic as ``pairwise_iou``, 0 for an empty
    intersection) and are evaluated only for the ``G x K`` candidate pairs; no ``[A, G]``
    IoU matrix is built.

    Call: ``matcher(anchors_per_level, gt_boxes, return_ious=False)``

    Args:
        anchors_per_level: list with one ``[N_l, 4]`` XYXY tensor or :class:`Boxes` per level
            (e.g. the output of ``DefaultAnchorGenerator`` for one image).
        gt_boxes: ``[G, 4]`` XYXY tensor or :class:`Boxes`; moved to the anchors' device.
        return_ious: also return the IoU of each anchor with its matched ground truth.

    Returns:
        ``matched_idxs``: int64 tensor ``[sum_l N_l]`` on the anchors' device, the index into
        ``gt_boxes`` of the matched ground truth, -1 for background. With ``return_ious=True``
        a tuple ``(matched_idxs, matched_ious)``; ``matched_ious`` (float32) is the IoU with
        the matched box and 0 for background (the reference reports -INF there). Boxes are
        processed in float32 (detectron2's ``Boxes`` dtype) whatever the input dtype.

    Computation is vectorised over ground truths and anchors (one Python loop over levels).
    Memory: per level two ``[G, N_l]`` float32 temporaries (plus an int64 key matrix with
    ``stable_ties``); everything else is ``O(G * K + A)``.
    """

    def __init__(self, topk: int = 9, center_margin: float = 0.01, stable_ties: bool = False):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = int(topk)
        self.center_margin = float(center_margin)
        self.stable_ties = bool(stable_ties)

    def __repr__(self):
        return (f"ATSSMatcher(topk={self.topk}, center_margin={self.center_margin}, "
                f"stable_ties={self.stable_ties})")

    def _nearest(self, dist: torch.Tensor, k: int) -> torch.Tensor:
        """Indices ``[G, k]`` of the k smallest entries of each row of ``dist`` [G, N]."""
        if not self.stable_ties:
            return dist.topk(k, dim=1, largest=False).indices
        # Lowest index first among ties: rank by (distance, index). The bit pattern of a
        # non-negative float32 read as an integer preserves its order, so the int64 key
        # (bits << 32) + index is unique and ordered like the (distance, index) pair.
        index = torch.arange(dist.shape[1], device=dist.device, dtype=torch.int64)
        key = (dist.view(torch.int32).to(torch.int64) << 32).add_(index)
        return key.topk(k, dim=1, largest=False).indices

    @torch.no_grad()
    def __call__(
        self,
        anchors_per_level: Sequence[BoxesLike],
        gt_boxes: BoxesLike,
        return_ious: bool = False,
    ):
        levels: List[torch.Tensor] = [_as_tensor(a) for a in anchors_per_level]
        gt = _as_tensor(gt_boxes)
        # float32 throughout, as detectron2's Boxes (which the IoU uses) stores boxes.
        device, dtype = (levels[0].device if levels else gt.device), torch.float32
        levels = [a.to(device=device, dtype=dtype) for a in levels]
        anchors = torch.cat(levels) if levels else torch.zeros(0, 4, device=device, dtype=dtype)
        gt = gt.to(device=device, dtype=dtype)
        num_anchors, num_gt = anchors.shape[0], gt.shape[0]

        matched_idxs = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
        matched_ious = torch.zeros(num_anchors, dtype=dtype, device=device)
        if num_gt == 0 or num_anchors == 0:
            return (matched_idxs, matched_ious) if return_ious else matched_idxs

        acx, acy = _centers(anchors)
        gcx, gcy = _centers(gt)

        # 1. per level and ground truth, the k anchors nearest to the ground-truth centre.
        candidates = []
        start = 0
        for boxes in levels:
            n = boxes.shape[0]
            k = min(self.topk, n)
            if k > 0:
                # [G, N_l] Euclidean distances with the reference's arithmetic (it builds the
                # transposed [N_l, G] matrix; row-wise top-k is faster and, on CPU, picks the
                # same indices, ties included).
                dist = acx[None, start:start + n] - gcx[:, None]
                dist.mul_(dist)
                dy = acy[None, start:start + n] - gcy[:, None]
                dist.add_(dy.mul_(dy)).sqrt_()
                del dy
                candidates.append(self._nearest(dist, k) + start)
                del dist
            start += n
        cand = torch.cat(candidates, dim=1)  # [G, K] anchor indices, K = sum_l k_l
        num_cand = cand.shape[1]

        # 2. IoU of each (ground truth, candidate) pair: detectron2's IoU, evaluated only on
        # the G*K candidate pairs (the other IoUs are never used).
        flat = cand.reshape(-1)
        cand_ious = matched_pairwise_iou(
            Boxes(anchors[flat]), Boxes(gt.repeat_interleave(num_cand, dim=0))
        ).nan_to_num_(0.0).view(num_gt, num_cand)

        # 3. adaptive IoU threshold per ground truth: mean + unbiased std of candidate IoUs
        # (reduced over a [K, G] layout, as the reference does).
        cand_ious_t = cand_ious.t().contiguous()
        if num_cand > 1:
            thr = cand_ious_t.mean(dim=0) + cand_ious_t.std(dim=0)
        else:  # std of one sample is NaN in the reference: no positives
            thr = torch.full((num_gt,), float("nan"), dtype=dtype, device=device)
        is_pos = cand_ious >= thr[:, None]

        # 4. candidate centre inside the ground truth (by more than center_margin).
        ccx, ccy = acx[cand], acy[cand]
        inside_dist = torch.minimum(  # min(l, t, r, b)
            torch.minimum(ccx - gt[:, 0:1], ccy - gt[:, 1:2]),
            torch.minimum(gt[:, 2:3] - ccx, gt[:, 3:4] - ccy),
        )
        is_pos &= inside_dist > self.center_margin

        # 5. anchors positive for several ground truths: highest IoU, lowest index on ties.
        first, best = resolve_multiple_matches(cand, is_pos, cand_ious, num_anchors)
        has_match = first < num_gt
        matched_idxs[has_match] = first[has_match]
        matched_ious[has_match] = best[has_match]
        return (matched_idxs, matched_ious) if return_ious else matched_idxs
