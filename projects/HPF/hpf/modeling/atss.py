"""
ATSS (Zhang et al., CVPR 2020) as a detectron2 ``DenseDetector``, with the settings of the
mmdetection implementation HPF is built on:
one square anchor of 8 x stride per location, ``ATSSMatcher`` (top-9 per level, mean + std IoU
threshold), deltas with stds (0.1, 0.1, 0.2, 0.2), GIoU x 2 weighted by the centerness target,
centerness BCE, and the classification loss pluggable (``PluggableLossMixin``).
"""
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes, Instances
from fvcore.nn import giou_loss

from .dense_detector import (
    PluggableLossMixin,
    iou_targets,
    matched_labels_and_boxes,
    nms_detections,
    reduce_mean,
)
from .matcher import ATSSMatcher
from .utils import check_finite_predictions

__all__ = ["ATSS", "ATSSHead"]


class ATSSHead(FCOSHead):
    """detectron2's FCOS head (cls / box towers, centerness on the box tower) with the
    learnable scale per level of the ATSS reference on the box deltas."""

    def __init__(self, *, input_shape, conv_dims, **kwargs):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

    def forward(self, features):
        logits, bbox_reg, ctrness = super().forward(features)
        return logits, [r * s for r, s in zip(bbox_reg, self.scales)], ctrness


class ATSS(PluggableLossMixin, DenseDetector):
    def __init__(
        self,
        *,
        backbone,
        head,
        head_in_features=None,
        anchor_generator,
        box2box_transform: Optional[Box2BoxTransform] = None,
        anchor_matcher: Optional[ATSSMatcher] = None,
        num_classes: int,
        cls_loss: Optional[nn.Module] = None,
        loss_balance: Optional[nn.Module] = None,
        box_loss_weight: float = 2.0,
        centerness_loss_weight: float = 1.0,
        prior_prob: Union[float, str] = 0.01,
        test_score_thresh: Union[float, str] = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        loss_normalizer: str = "mean",
        pixel_mean,
        pixel_std,
        input_format: str = "BGR",
    ):
        """
        Args:
            box_loss_weight: GIoU weight (2.0 in the reference).
            centerness_loss_weight: 1.0 in the reference code; the HPF paper (Sec. 5) says 0.5.
            test_score_thresh: threshold on the classification score *before* it is multiplied
                by the centerness (the reference; detectron2's FCOS thresholds the product).
            loss_normalizer: "mean" = positives of the batch averaged over processes (the
                reference); "ema" = detectron2's running average.
            Other arguments: see detectron2's ``RetinaNet`` and ``PluggableLossMixin``.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform or Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
        self.anchor_matcher = anchor_matcher or ATSSMatcher(topk=9)
        self.box_loss_weight = box_loss_weight
        self.centerness_loss_weight = centerness_loss_weight
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self._init_pluggable(cls_loss, loss_balance, prior_prob, test_score_thresh,
                             loss_normalizer)

    # --- training ----------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Per image: class per anchor (num_classes = background) and matched box."""
        gt_labels, matched_boxes = [], []
        anchors_all = Boxes.cat(anchors).tensor
        for inst in gt_instances:
            idx = self.anchor_matcher(anchors, inst.gt_boxes)
            labels, boxes = matched_labels_and_boxes(idx, inst, anchors_all,
                                                     self.num_classes)
            gt_labels.append(labels)
            matched_boxes.append(boxes)
        return gt_labels, matched_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr):
        check_finite_predictions(pred_deltas)
        labels = self._anchor_labels(gt_labels, ema_initial=100)  # ATSS ignores no anchor
        pos_mask, normalizer = labels.pos_mask, labels.normalizer

        anchors_all = Boxes.cat(anchors).tensor
        gt = torch.stack(gt_boxes)[pos_mask]  # (P, 4)
        pos_anchors = anchors_all.expand(len(pos_mask), -1, -1)[pos_mask]
        pred_boxes = self.box2box_transform.apply_deltas(cat(pred_deltas, dim=1)[pos_mask],
                                                         pos_anchors)
        ctr_targets = centerness_targets(pos_anchors, gt)

        loss_cls = self._classification_loss(
            pred_logits, labels.gt_labels, normalizer, None,
            lambda: iou_targets(pred_boxes, gt, pos_mask),
        )

        # GIoU weighted by the centerness target, normalised by the targets' sum over processes.
        loss_box = (giou_loss(pred_boxes, gt, reduction="none") * ctr_targets).sum()
        loss_box = self.box_loss_weight * loss_box / max(reduce_mean(ctr_targets.sum()), 1e-6)
        pred_ctr = cat(pred_ctr, dim=1).squeeze(2)[pos_mask]
        loss_ctr = F.binary_cross_entropy_with_logits(pred_ctr, ctr_targets, reduction="sum")
        loss_ctr = self.centerness_loss_weight * loss_ctr / normalizer
        if labels.num_pos == 0:  # keep every head parameter in the graph (DDP)
            loss_box = loss_box + 0.0 * sum(p.sum() for p in pred_deltas)
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box, "loss_centerness": loss_ctr}
        return self._balance(losses, "loss_cls", "loss_box_reg")

    # --- inference ---------------------------------------------------------------------
    def forward_inference(self, images, features, predictions):
        self._check_test_score_thresh()
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors, [x[i] for x in pred_logits], [x[i] for x in pred_deltas],
                [x[i] for x in pred_ctr], image_size,
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(self, anchors, pred_logits, pred_deltas, pred_ctr, image_size):
        """The reference's rule: per level the top-k anchors by max_c sigma(cls) sigma(ctr),
        then the (anchor, class) pairs whose sigma(cls) passes the threshold, scored
        sigma(cls) sigma(ctr); class-wise NMS over all levels; the best
        ``max_detections_per_image``."""
        boxes, scores, classes = [], [], []
        for anchors_l, logits_l, deltas_l, ctr_l in zip(anchors, pred_logits, pred_deltas,
                                                         pred_ctr):
            cls_prob = logits_l.sigmoid()
            ctr_prob = ctr_l.sigmoid()  # (A, 1)
            k = min(self.test_topk_candidates, len(cls_prob))
            top = (cls_prob * ctr_prob).max(dim=1).values.topk(k).indices
            cls_prob, ctr_prob = cls_prob[top], ctr_prob[top]
            anchor_idx, class_idx = (cls_prob > self.test_score_thresh).nonzero(as_tuple=True)
            boxes.append(self.box2box_transform.apply_deltas(
                deltas_l[top[anchor_idx]], anchors_l.tensor[top[anchor_idx]]))
            scores.append(cls_prob[anchor_idx, class_idx] * ctr_prob[anchor_idx, 0])
            classes.append(class_idx)
        return nms_detections(cat(boxes), cat(scores), cat(classes), image_size,
                              self.test_nms_thresh, self.max_detections_per_image)


def centerness_targets(anchors, gt_boxes):
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of each anchor centre in its
    ground-truth box (paired rows)."""
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    lt = centers - gt_boxes[:, :2]
    rb = gt_boxes[:, 2:] - centers
    lr = torch.stack([lt[:, 0], rb[:, 0]], 1)
    tb = torch.stack([lt[:, 1], rb[:, 1]], 1)
    ratio = (lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)
    return ratio.clamp(min=0).sqrt()
