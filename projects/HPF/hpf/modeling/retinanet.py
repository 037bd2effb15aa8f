from typing import Optional, Union

import torch
import torch.nn as nn
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet as _D2RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from .dense_detector import PluggableLossMixin, quality_targets
from .utils import check_finite_predictions

__all__ = ["RetinaNet"]


class RetinaNet(PluggableLossMixin, _D2RetinaNet):
    """
    detectron2's RetinaNet. ``box_loss``: ``None`` keeps detectron2's ``box_reg_loss_type``
    (smooth L1 / GIoU ...); a ``GHMRLoss`` replaces it (GHM-R on the positives' deltas).
    ``box_loss_weight`` multiplies the box loss (0.25 gives maskrcnn-benchmark's division by
    4 x positives, the Sampling-Free code).
    """

    def __init__(self, *, cls_loss: Optional[nn.Module] = None, box_loss: Optional[nn.Module] = None,
                 loss_balance: Optional[nn.Module] = None, prior_prob: Union[float, str] = 0.01,
                 test_score_thresh: Union[float, str] = 0.05, loss_normalizer: str = "ema",
                 box_loss_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.box_loss = box_loss
        self.box_loss_weight = box_loss_weight
        self._init_pluggable(cls_loss, loss_balance, prior_prob, test_score_thresh,
                             loss_normalizer)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        gt_labels = torch.stack(gt_labels)  # (B, R)
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos / len(gt_labels))
        normalizer = self._normalizer(num_pos, 100)

        quality = None
        if getattr(self.cls_loss, "uses_quality_targets", False):
            quality = quality_targets(self.box2box_transform, anchors, pred_anchor_deltas,
                                       gt_boxes, pos_mask)
        loss_cls = self._classification_loss(pred_logits, gt_labels, normalizer, valid_mask,
                                             quality)
        loss_box_reg = self._box_loss(anchors, pred_anchor_deltas, gt_boxes, pos_mask)
        if self.box_loss is None:
            loss_box_reg = loss_box_reg / normalizer
        loss_box_reg = self.box_loss_weight * loss_box_reg
        return self._balance({"loss_cls": loss_cls, "loss_box_reg": loss_box_reg},
                             "loss_cls", "loss_box_reg")

    def _box_loss(self, anchors, pred_anchor_deltas, gt_boxes, pos_mask):
        if self.box_loss is None:
            check_finite_predictions(pred_anchor_deltas)
            return _dense_box_regression_loss(
                anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
                box_reg_loss_type=self.box_reg_loss_type, smooth_l1_beta=self.smooth_l1_beta,
            )
        # GHM-R: per level, on the deltas of the positives.
        anchors_all = Boxes.cat(anchors).tensor
        target = torch.stack([self.box2box_transform.get_deltas(anchors_all, g) for g in gt_boxes])
        sizes = [len(a) for a in anchors]
        preds, targets = [], []
        for pred_l, target_l, pos_l in zip(pred_anchor_deltas, target.split(sizes, dim=1),
                                           pos_mask.split(sizes, dim=1)):
            preds.append(pred_l[pos_l])
            targets.append(target_l[pos_l])
        return self.box_loss(preds, targets)
