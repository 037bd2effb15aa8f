"""
GFL (Generalized Focal Loss, Li et al., NeurIPS 2020) as a detectron2 ``DenseDetector``, with the
settings of the mmdetection implementation HPF is built on: ATSS assignment on one square anchor
of 8 x stride per location, a box side predicted as a distribution over the bins 0..reg_max (in
strides from the anchor centre) whose expectation is the distance, GIoU x 2 and Distribution
Focal Loss x 0.25 weighted by the positive's class score, no centerness, and the classification
loss pluggable (``PluggableLossMixin``; Quality Focal Loss on the IoU of the predicted box by
default).
"""
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes
from fvcore.nn import giou_loss

from hpf.losses import QualityFocalLoss
from hpf.losses.distribution_focal import distribution_focal_loss

from .atss import ATSS
from .dense_detector import PluggableLossMixin, iou_targets, nms_detections, reduce_mean
from .matcher import ATSSMatcher
from .utils import check_finite_predictions

__all__ = ["GFL", "GFLHead", "distances_to_boxes", "boxes_to_distances", "integral_distances"]


class GFLHead(RetinaNetHead):
    """detectron2's RetinaNet head with one anchor per location (cls / box towers), a box
    branch of ``4 * (reg_max + 1)`` distribution logits per location (left, top, right, bottom,
    ``reg_max + 1`` bins each) and the learnable scale per level of the reference on them.

    Args:
        reg_max: the last bin n of the distributions over 0..n (16 in the reference).
        Other arguments: see detectron2's ``RetinaNetHead`` (``num_anchors`` is 1).
    """

    def __init__(self, *, input_shape, conv_dims, reg_max: int = 16, **kwargs):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, num_anchors=1, **kwargs)
        if not isinstance(reg_max, int) or reg_max < 1:
            raise ValueError(f"reg_max must be an integer >= 1, got {reg_max!r}")
        self.reg_max = reg_max
        self.bbox_pred = nn.Conv2d(conv_dims[-1], 4 * (reg_max + 1), kernel_size=3, padding=1)
        nn.init.normal_(self.bbox_pred.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 0)
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

    def forward(self, features):
        logits, box_dists = super().forward(features)
        return logits, [d * s for d, s in zip(box_dists, self.scales)]


def integral_distances(logits: torch.Tensor) -> torch.Tensor:
    """The expectation sum_i i * softmax_i of each side's distribution: ``[..., 4 * (n + 1)]``
    logits -> ``[..., 4]`` distances in bins (strides), in float32."""
    dists = F.softmax(logits.float().unflatten(-1, (4, -1)), dim=-1)
    bins = torch.arange(dists.shape[-1], dtype=dists.dtype, device=dists.device)
    return (dists * bins).sum(dim=-1)  # not a matmul, which autocast would run in low precision


def distances_to_boxes(centers: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` points and ``[N, 4]`` (left, top, right, bottom) distances -> ``[N, 4]`` XYXY
    boxes."""
    return torch.cat([centers - distances[:, :2], centers + distances[:, 2:]], dim=1)


def boxes_to_distances(centers: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`distances_to_boxes`: (left, top, right, bottom) of each box from
    its point."""
    return torch.cat([centers - boxes[:, :2], boxes[:, 2:] - centers], dim=1)


class GFL(PluggableLossMixin, DenseDetector):
    """GFL: ATSS labelling (:meth:`ATSS.label_anchors`), a :class:`GFLHead`, the pluggable
    classification loss on the joint class-quality score, GIoU + DFL on the distributions'
    boxes; losses ``loss_cls``, ``loss_box_reg`` and ``loss_dfl``."""

    def __init__(
        self,
        *,
        backbone,
        head: GFLHead,
        head_in_features=None,
        anchor_generator,
        anchor_matcher: Optional[ATSSMatcher] = None,
        num_classes: int,
        cls_loss: Optional[nn.Module] = None,
        loss_balance: Optional[nn.Module] = None,
        box_loss_weight: float = 2.0,
        dfl_loss_weight: float = 0.25,
        dfl_target_margin: float = 0.1,
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
            head: a :class:`GFLHead`; its ``reg_max`` sets the bins of the distributions.
            anchor_generator: one square anchor per location; only its centre is used (the
                assignment uses the whole box).
            cls_loss: default ``QualityFocalLoss(beta=2)`` on the IoU of the predicted box.
            box_loss_weight: GIoU weight (2.0 in the reference).
            dfl_loss_weight: Distribution Focal Loss weight (0.25 in the reference).
            dfl_target_margin: the DFL targets (distances in strides) are clamped to
                ``reg_max - dfl_target_margin`` (0.1 in the reference).
            test_score_thresh: threshold on sigma(cls), the joint class-quality score.
            loss_normalizer: "mean" = positives of the batch averaged over processes (the
                reference); "ema" = detectron2's running average.
            Other arguments: see detectron2's ``RetinaNet`` and ``PluggableLossMixin``.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        if not isinstance(head, GFLHead):
            raise TypeError(f"head must be a GFLHead (distribution box branch), got "
                            f"{type(head).__name__}")
        if not 0 <= dfl_target_margin < head.reg_max:
            raise ValueError(f"dfl_target_margin must lie in [0, reg_max = {head.reg_max}), "
                             f"got {dfl_target_margin}")
        self.num_classes = num_classes
        self.reg_max = head.reg_max
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher or ATSSMatcher(topk=9)
        self.box_loss_weight = box_loss_weight
        self.dfl_loss_weight = dfl_loss_weight
        self.dfl_target_margin = dfl_target_margin
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        if cls_loss is None:
            cls_loss = QualityFocalLoss(beta=2.0)
        self._init_pluggable(cls_loss, loss_balance, prior_prob, test_score_thresh,
                             loss_normalizer)

    def _transposed(self, predictions):
        return self._transpose_dense_predictions(
            predictions, [self.num_classes, 4 * (self.reg_max + 1)]
        )

    def _anchor_points(self, anchors: List[Boxes]):
        """Centres ``[R, 2]`` and strides ``[R]`` of the anchors of all levels."""
        centers = Boxes.cat(anchors).get_centers()
        strides = cat([torch.full((len(a),), float(s), device=centers.device)
                       for a, s in zip(anchors, self.anchor_generator.strides)])
        return centers, strides

    # --- training ----------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_dists = self._transposed(predictions)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_dists, gt_boxes)

    label_anchors = ATSS.label_anchors  # the ATSS assignment, unchanged

    def losses(self, anchors, pred_logits, gt_labels, pred_dists, gt_boxes):
        """
        Args:
            anchors: per-level ``Boxes``.
            pred_logits: per-level ``[B, A_l, C]`` class logits.
            gt_labels: per-image ``[R]`` labels from :meth:`label_anchors`.
            pred_dists: per-level ``[B, A_l, 4 * (reg_max + 1)]`` distribution logits.
            gt_boxes: per-image ``[R, 4]`` matched ground-truth boxes.
        """
        check_finite_predictions(pred_dists)
        labels = self._anchor_labels(gt_labels, ema_initial=100)  # ATSS ignores no anchor
        pos_mask, normalizer = labels.pos_mask, labels.normalizer

        centers, strides = self._anchor_points(anchors)
        num_images = len(pos_mask)
        pos_centers = centers.expand(num_images, -1, -1)[pos_mask]
        pos_strides = strides.expand(num_images, -1)[pos_mask].unsqueeze(1)
        gt = torch.stack(gt_boxes)[pos_mask]  # (P, 4)
        pos_dists = cat(pred_dists, dim=1)[pos_mask].float()  # (P, 4 (n + 1))
        pred_boxes = distances_to_boxes(pos_centers, integral_distances(pos_dists) * pos_strides)

        # Joint class-quality target: the IoU of the detached predicted box with its ground
        # truth, on the class of the positive.
        loss_cls = self._classification_loss(
            pred_logits, labels.gt_labels, normalizer, None,
            lambda: iou_targets(pred_boxes, gt, pos_mask),
        )

        # Box losses weighted by the positive's best class score (detached), normalised by the
        # weights' sum averaged over processes, at least 1.
        weights = cat(pred_logits, dim=1)[pos_mask].detach().float().sigmoid().amax(dim=1)
        weight_sum = max(reduce_mean(weights.sum()), 1.0)
        loss_box = (giou_loss(pred_boxes, gt, reduction="none") * weights).sum()
        loss_box = self.box_loss_weight * loss_box / weight_sum

        # DFL on each side: the target is the ground-truth distance in strides, kept inside the
        # bins; the 4 sides of a positive share its weight and count as one (the reference's
        # avg_factor 4).
        with torch.no_grad():
            dist_targets = boxes_to_distances(pos_centers, gt) / pos_strides
            dist_targets = dist_targets.clamp(min=0, max=self.reg_max - self.dfl_target_margin)
        loss_dfl = distribution_focal_loss(pos_dists.reshape(-1, self.reg_max + 1),
                                           dist_targets.reshape(-1))
        loss_dfl = (loss_dfl.view(-1, 4) * weights[:, None]).sum() / 4
        loss_dfl = self.dfl_loss_weight * loss_dfl / weight_sum

        if labels.num_pos == 0:  # keep every head parameter in the graph (DDP)
            zero = 0.0 * sum(p.sum() for p in pred_dists)
            loss_box, loss_dfl = loss_box + zero, loss_dfl + zero
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box, "loss_dfl": loss_dfl}
        return self._balance(losses, "loss_cls", "loss_box_reg")

    # --- inference ---------------------------------------------------------------------
    def forward_inference(self, images, features, predictions):
        self._check_test_score_thresh()
        pred_logits, pred_dists = self._transposed(predictions)
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors, [x[i] for x in pred_logits], [x[i] for x in pred_dists], image_size
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(self, anchors, pred_logits, pred_dists, image_size):
        """The reference's rule: per level the top-k anchors by max_c sigma(cls), then the
        (anchor, class) pairs whose sigma(cls) passes the threshold, with the boxes decoded
        from the distributions and clipped to the image; class-wise NMS over all levels; the
        best ``max_detections_per_image``."""
        boxes, scores, classes = [], [], []
        for anchors_l, stride, logits_l, dists_l in zip(
            anchors, self.anchor_generator.strides, pred_logits, pred_dists
        ):
            cls_prob = logits_l.sigmoid()
            k = min(self.test_topk_candidates, len(cls_prob))
            top = cls_prob.max(dim=1).values.topk(k).indices
            cls_prob = cls_prob[top]
            anchor_idx, class_idx = (cls_prob > self.test_score_thresh).nonzero(as_tuple=True)
            idx = top[anchor_idx]
            distances = integral_distances(dists_l[idx]) * stride
            boxes.append(distances_to_boxes(anchors_l[idx].get_centers(), distances))
            scores.append(cls_prob[anchor_idx, class_idx])
            classes.append(class_idx)
        # Clipped before NMS, as the reference decodes with the image's shape.
        return nms_detections(cat(boxes), cat(scores), cat(classes), image_size,
                              self.test_nms_thresh, self.max_detections_per_image,
                              clip_before_nms=True)
