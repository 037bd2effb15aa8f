"""detectron2's FCOS with per-level regression ranges and a pluggable classification loss."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.structures import Boxes, pairwise_point_box_distance

from .dense_detector import PluggableLossMixin, quality_targets
from .utils import check_finite_predictions

__all__ = ["FCOS"]


class FCOS(PluggableLossMixin, _D2FCOS):
    """
    detectron2's FCOS with a pluggable classification loss (see ``PluggableLossMixin``).

    ``regress_ranges``: one ``(low, high)`` pair per level bounding max(l, t, r, b) of the
    positives of that level. ``None`` keeps detectron2's rule, (4·stride, 8·stride) with the
    first low bound 0 and the last high bound inf = (0, 64), (64, 128), ... (512, inf) on
    P3-P7. Small images need smaller ranges, else P6-P7 get no positives. Quality targets
    (QFL / VFL): IoU of the decoded prediction with its ground truth.
    """

    def __init__(self, *, regress_ranges: Optional[Sequence[Tuple[float, float]]] = None,
                 cls_loss: Optional[nn.Module] = None, loss_balance: Optional[nn.Module] = None,
                 prior_prob: Union[float, str] = 0.01, test_score_thresh: Union[float, str] = 0.2,
                 loss_normalizer: str = "ema", **kwargs):
        super().__init__(**kwargs)
        if regress_ranges is not None:
            if len(regress_ranges) != len(self.head_in_features):
                raise ValueError(
                    f"regress_ranges has {len(regress_ranges)} entries but the head has "
                    f"{len(self.head_in_features)} levels ({self.head_in_features})."
                )
            regress_ranges = [tuple(float(v) for v in r) for r in regress_ranges]
        self.regress_ranges = regress_ranges
        self._init_pluggable(cls_loss, loss_balance, prior_prob, test_score_thresh,
                             loss_normalizer)

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
        # Boxes are decoded and compared in float32: Box2BoxTransformLinear keeps the dtype of
        # the deltas, bfloat16 / float16 under autocast, whose spacing is several pixels at
        # COCO coordinates (and fvcore's GIoU fails on a bfloat16 / float32 mix).
        pred_anchor_deltas = [d.float() for d in pred_anchor_deltas]
        labels = self._anchor_labels(gt_labels, ema_initial=300)  # FCOS ignores no anchor
        pos_mask, normalizer = labels.pos_mask, labels.normalizer
        loss_cls = self._classification_loss(
            pred_logits, labels.gt_labels, normalizer, None,
            lambda: quality_targets(self.box2box_transform, anchors, pred_anchor_deltas,
                                    gt_boxes, pos_mask),
        )
        loss_box_reg = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
            box_reg_loss_type="giou",
        ) / normalizer
        ctr_targets = self.compute_ctrness_targets(anchors, gt_boxes)
        pred_ctr = torch.cat(pred_ctr, dim=1).squeeze(dim=2)
        loss_ctr = F.binary_cross_entropy_with_logits(
            pred_ctr[pos_mask], ctr_targets[pos_mask], reduction="sum"
        ) / normalizer
        losses = {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_box_reg, "loss_fcos_ctr": loss_ctr}
        return self._balance(losses, "loss_fcos_cls", "loss_fcos_loc")
