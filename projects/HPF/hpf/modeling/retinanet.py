from typing import Optional, Union

import torch
import torch.nn as nn
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet as _D2RetinaNet
from detectron2.structures import Boxes

from hpf.losses import BoxRegressionLoss, check_loss_type

from .dense_detector import PluggableLossMixin, quality_targets
from .utils import log_metrics
from .utils import check_finite_predictions

__all__ = ["RetinaNet"]


class RetinaNet(PluggableLossMixin, _D2RetinaNet):
    """
    detectron2's RetinaNet. ``box_loss``: ``None`` keeps detectron2's ``box_reg_loss_type``
    (smooth L1 / GIoU ...); a ``hpf.losses.BoxRegressionLoss`` (``GHMRLoss``) replaces it, on
    the positives' deltas per level.
    ``box_loss_weight`` multiplies the box loss (0.25 gives maskrcnn-benchmark's division by
    4 x positives, the Sampling-Free code).
    """

    def __init__(self, *, cls_loss: Optional[nn.Module] = None, box_loss: Optional[nn.Module] = None,
                 loss_balance: Optional[nn.Module] = None, prior_prob: Union[float, str] = 0.01,
                 test_score_thresh: Union[float, str] = 0.05, loss_normalizer: str = "ema",
                 box_loss_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.box_loss = (
            None if box_loss is None else check_loss_type(box_loss, BoxRegressionLoss, "box_loss")
        )
        self.box_loss_weight = box_loss_weight
        self._init_pluggable(cls_loss, loss_balance, prior_prob, test_score_thresh,
                             loss_normalizer)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        labels = self._anchor_labels(gt_labels, ema_initial=100)
        pos_mask, normalizer = labels.pos_mask, labels.normalizer
        loss_cls = self._classification_loss(
            pred_logits, labels.gt_labels, normalizer, labels.valid_mask,
            lambda: quality_targets(self.box2box_transform, anchors, pred_anchor_deltas,
                                    gt_boxes, pos_mask),
        )
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
        # A BoxRegressionLoss: per level, on the deltas of the positives.
        anchors_all = Boxes.cat(anchors).tensor
        target = torch.stack([self.box2box_transform.get_deltas(anchors_all, g) for g in gt_boxes])
        sizes = [len(a) for a in anchors]
        preds, targets = [], []
        for pred_l, target_l, pos_l in zip(pred_anchor_deltas, target.split(sizes, dim=1),
                                           pos_mask.split(sizes, dim=1)):
            preds.append(pred_l[pos_l])
            targets.append(target_l[pos_l])
        loss = self.box_loss(preds, targets)
        log_metrics(self.box_loss)
        return loss
