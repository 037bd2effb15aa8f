"""detectron2's FCOS with the per-level regression ranges as an argument."""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.structures import Boxes, pairwise_point_box_distance

from .utils import check_finite_predictions

__all__ = ["FCOS"]


class FCOS(_D2FCOS):
    """
    ``regress_ranges``: one ``(low, high)`` pair per level bounding max(l, t, r, b) of the
    positives of that level. ``None`` keeps detectron2's rule, (4·stride, 8·stride) with the
    first low bound 0 and the last high bound inf = (0, 64), (64, 128), ... (512, inf) on
    P3-P7. Small images need smaller ranges, else P6-P7 get no positives.
    """

    def __init__(self, *, regress_ranges: Optional[Sequence[Tuple[float, float]]] = None, **kw):
        super().__init__(**kw)
        if regress_ranges is not None:
            if len(regress_ranges) != len(self.head_in_features):
                raise ValueError(
                    f"regress_ranges has {len(regress_ranges)} entries but the head has "
                    f"{len(self.head_in_features)} levels ({self.head_in_features})."
                )
            regress_ranges = [tuple(float(v) for v in r) for r in regress_ranges]
        self.regress_ranges = regress_ranges

    @torch.no_grad()
    def _match_anchors(self, gt_boxes: Boxes, anchors: List[Boxes]):
        if self.regress_ranges is None:
            return super()._match_anchors(gt_boxes, anchors)
        # Same rule as detectron2 (center sampling, inside box, size range, smallest area),
        # with the size range read from self.regress_ranges.
        lower = cat([a.tensor.new_full((len(a),), r[0]) for a, r in zip(anchors, self.regress_ranges)])
        upper = cat([a.tensor.new_full((len(a),), r[1]) for a, r in zip(anchors, self.regress_ranges)])
        anchors = Boxes.cat(anchors)
        anchor_centers = anchors.get_centers()
        anchor_sizes = anchors.tensor[:, 2] - anchors.tensor[:, 0]

        center_dists = (anchor_centers[None, :, :] - gt_boxes.get_centers()[:, None, :]).abs_()
        matched = center_dists.max(dim=2).values < self.center_sampling_radius * anchor_sizes[None]
        dist = pairwise_point_box_distance(anchor_centers, gt_boxes).permute(1, 0, 2)
        matched &= dist.min(dim=2).values > 0
        max_dist = dist.max(dim=2).values
        matched &= (max_dist > lower[None]) & (max_dist < upper[None])
        return matched.to(torch.float32) * (1e8 - gt_boxes.area()[:, None])

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_ctr):
        check_finite_predictions(pred_anchor_deltas)
        return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                              pred_ctr)
