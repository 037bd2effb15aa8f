"""
VarifocalNet (Zhang, Wang, Dayoub, Sunderhauf, CVPR 2021) as a detectron2 ``DenseDetector``,
with the settings of the mmdetection implementation HPF is built on (``VFNetHead``, ATSS
assignment):

* per location an initial box (distances l, t, r, b), refined through a star-shaped deformable
  convolution that samples the feature map at the box's centre, corners and edge midpoints;
* an IoU-aware classification score, from the same star-shaped convolution on the
  classification features, trained by the pluggable classification loss (Varifocal Loss by
  default) towards the IoU of the refined box with its ground truth;
* GIoU on the initial and on the refined boxes, each weighted by the box's own IoU;
* ATSS assignment on one square anchor of 8 x stride per location.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from detectron2.layers import cat, get_norm
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes
from fvcore.nn import giou_loss

from hpf.layers import DeformConv
from hpf.losses import VarifocalLoss

from .atss import ATSS
from .dense_detector import PluggableLossMixin, iou_targets, nms_detections, reduce_mean
from .matcher import ATSSMatcher
from .utils import check_finite_predictions

__all__ = ["VFNet", "VFNetHead", "distances_to_boxes", "star_offsets"]


def star_offsets(boxes: torch.Tensor, stride: float) -> torch.Tensor:
    """
    Offsets of a 3x3 deformable convolution that samples each location's box (VarifocalNet
    Sec. 4.1): its centre, four corners and four edge midpoints.

    Args:
        boxes: ``[N, 4, H, W]`` distances (l, t, r, b) in input pixels.
        stride: the feature map's stride.

    Returns:
        ``[N, 18, H, W]`` offsets in the layout of ``DeformConv``: channel ``2k`` (y) and
        ``2k + 1`` (x) of kernel position ``k = 3 i + j``; the sampling point of ``(i, j)`` is
        ``(y_i, x_j)`` with ``y = (-t, 0, b)`` and ``x = (-l, 0, r)`` in feature-map cells, and
        the offset is that point minus the regular grid's ``(i - 1, j - 1)``.
    """
    if boxes.dim() != 4 or boxes.shape[1] != 4:
        raise ValueError(f"star_offsets expects [N, 4, H, W] distances, got {tuple(boxes.shape)}")
    left, top, right, bottom = (boxes / stride).unbind(1)
    zero = torch.zeros_like(left)
    rows = torch.stack([-top + 1, zero, bottom - 1], dim=1)  # y_i - (i - 1)
    cols = torch.stack([-left + 1, zero, right - 1], dim=1)  # x_j - (j - 1)
    n, _, h, w = rows.shape
    offsets = torch.stack([rows[:, :, None].expand(n, 3, 3, h, w),
                           cols[:, None, :].expand(n, 3, 3, h, w)], dim=3)
    return offsets.reshape(n, 18, h, w)


def distances_to_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """XYXY boxes of ``[P, 2]`` points and their ``[P, 4]`` (l, t, r, b) distances."""
    return torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)


class VFNetHead(RetinaNetHead):
    """
    detectron2's RetinaNet towers (one location = one anchor) and, on top of them:

    * initial box: ``exp(s_l * conv(relu(norm(conv(box tower))))) * box_normalizers[l]``;
    * refined box: ``initial.detach() * exp(s'_l * conv(relu(dconv(box tower))))``;
    * IoU-aware score: ``cls_score(relu(dconv'(cls tower)))`` (logits);

    where both deformable convolutions sample with the star offsets of the initial box, whose
    gradient through the offsets is scaled by ``gradient_mul``; ``s_l``, ``s'_l`` are learnable
    scales per level.
    """

    def __init__(
        self,
        *,
        input_shape,
        num_classes: int,
        conv_dims: List[int],
        strides: Sequence[int],
        box_normalizers: Sequence[float],
        norm: str = "GN",
        prior_prob: float = 0.01,
        gradient_mul: float = 0.1,
    ):
        """
        Args:
            input_shape, num_classes, conv_dims, norm, prior_prob: as detectron2's
                ``RetinaNetHead`` (one anchor per location); ``len(conv_dims)`` convs per tower.
            strides: the stride of each input level.
            box_normalizers: per level, what ``exp`` of the initial box conv is multiplied by
                (the reference's ``reg_denom``: 64, 128, 256, 512, 1024 for P3-P7).
            gradient_mul: scale of the gradient that reaches the initial box through the
                deformable convolutions' offsets.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, num_anchors=1,
                         conv_dims=conv_dims, norm=norm, prior_prob=prior_prob)
        num_levels = len(input_shape)
        if len(strides) != num_levels or len(box_normalizers) != num_levels:
            raise ValueError(
                f"VFNetHead has {num_levels} input levels but {len(strides)} strides and "
                f"{len(box_normalizers)} box_normalizers"
            )
        self.strides = [float(s) for s in strides]
        self.box_normalizers = [float(b) for b in box_normalizers]
        self.gradient_mul = gradient_mul
        channels = conv_dims[-1]

        # self.bbox_pred (RetinaNetHead's) predicts the initial box from this conv's output.
        self.bbox_init_subnet = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=not norm),
            *([get_norm(norm, channels)] if norm else []),
            nn.ReLU(),
        )
        self.bbox_refine_dconv = DeformConv(channels, channels, 3, padding=1)
        self.bbox_refine = nn.Conv2d(channels, 4, 3, padding=1)
        self.cls_dconv = DeformConv(channels, channels, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        self.refine_scales = nn.Parameter(torch.ones(num_levels))
        for layer in (self.bbox_init_subnet[0], self.bbox_refine):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, features: List[torch.Tensor]):
        """
        Returns:
            Three lists with one ``[N, K, H_l, W_l]`` tensor per level: IoU-aware score logits
            (K = num_classes), initial boxes and refined boxes (K = 4, distances l, t, r, b in
            input pixels, float32).
        """
        if len(features) != len(self.strides):
            raise ValueError(f"VFNetHead got {len(features)} feature maps for "
                             f"{len(self.strides)} strides")
        logits, init_boxes, refined_boxes = [], [], []
        for level, x in enumerate(features):
            cls_feat = self.cls_subnet(x)
            box_feat = self.bbox_subnet(x)
            # exp in float32, as the reference (the conv may run in half precision).
            init = (self.scales[level] * self.bbox_pred(self.bbox_init_subnet(box_feat))
                    ).float().exp() * self.box_normalizers[level]
            g = self.gradient_mul
            offsets = star_offsets((1 - g) * init.detach() + g * init, self.strides[level])
            offsets = offsets.to(box_feat.dtype)
            refine = self.bbox_refine(self.bbox_refine_dconv(box_feat, offsets).relu())
            refined = (self.refine_scales[level] * refine).float().exp() * init.detach()
            logits.append(self.cls_score(self.cls_dconv(cls_feat, offsets).relu()))
            init_boxes.append(init)
            refined_boxes.append(refined)
        return logits, init_boxes, refined_boxes


class VFNet(PluggableLossMixin, DenseDetector):
    """VarifocalNet: ``VFNetHead`` on an FPN, ATSS assignment, the IoU-aware score trained by
    the pluggable ``cls_loss`` and ranked by it alone at test time."""

    def __init__(
        self,
        *,
        backbone,
        head: VFNetHead,
        head_in_features=None,
        anchor_generator,
        anchor_matcher: Optional[ATSSMatcher] = None,
        num_classes: int,
        cls_loss: Optional[nn.Module] = None,
        loss_balance: Optional[nn.Module] = None,
        init_box_loss_weight: float = 1.5,
        refined_box_loss_weight: float = 2.0,
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
            anchor_generator: one anchor per location; its centres are the points the boxes'
                distances are measured from, its boxes what ``anchor_matcher`` assigns.
            cls_loss: on the IoU-aware score; ``VarifocalLoss(alpha=0.75, gamma=2.0)`` if None.
            init_box_loss_weight / refined_box_loss_weight: GIoU weights of the initial (1.5)
                and refined (2.0) boxes.
            test_score_thresh: threshold on sigma(IoU-aware score).
            Other arguments: see ``ATSS``.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        if list(map(float, anchor_generator.strides)) != list(head.strides):
            raise ValueError(f"anchor_generator strides {list(anchor_generator.strides)} differ "
                             f"from the head's {list(head.strides)}")
        if any(n != 1 for n in anchor_generator.num_cell_anchors):
            raise ValueError("VFNet needs one anchor per location, anchor_generator has "
                             f"{anchor_generator.num_cell_anchors}")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher or ATSSMatcher(topk=9)
        self.init_box_loss_weight = init_box_loss_weight
        self.refined_box_loss_weight = refined_box_loss_weight
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self._init_pluggable(VarifocalLoss(0.75, 2.0) if cls_loss is None else cls_loss,
                             loss_balance, prior_prob, test_score_thresh, loss_normalizer)

    # --- training ----------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_init, pred_refined = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_init, pred_refined, gt_boxes)

    # The same assignment as ATSS: per image, class per anchor and matched box.
    label_anchors = ATSS.label_anchors

    def losses(self, anchors, pred_logits, gt_labels, pred_init, pred_refined, gt_boxes):
        check_finite_predictions(pred_init + pred_refined)
        labels = self._anchor_labels(gt_labels, ema_initial=100)  # ATSS ignores no anchor
        pos_mask = labels.pos_mask

        points = Boxes.cat(anchors).get_centers().expand(len(pos_mask), -1, -1)[pos_mask]
        gt = torch.stack(gt_boxes)[pos_mask]  # (P, 4)
        init_boxes = distances_to_boxes(points, cat(pred_init, dim=1)[pos_mask])
        refined_boxes = distances_to_boxes(points, cat(pred_refined, dim=1)[pos_mask])

        # The IoU of the detached refined box is the positives' score target; the reference
        # clamps it at 1e-6 so that every positive stays one (target > 0) for the loss.
        quality = iou_targets(refined_boxes, gt, pos_mask)
        quality[pos_mask] = quality[pos_mask].clamp(min=1e-6)
        loss_cls = self._classification_loss(pred_logits, labels.gt_labels, labels.normalizer,
                                              None, lambda: quality)

        init_ious = iou_targets(init_boxes, gt, pos_mask)[pos_mask].clamp(min=1e-6)
        loss_init = self.init_box_loss_weight * _iou_weighted_giou(init_boxes, gt, init_ious)
        loss_refined = self.refined_box_loss_weight * _iou_weighted_giou(
            refined_boxes, gt, quality[pos_mask])
        if labels.num_pos == 0:  # keep every head parameter in the graph (DDP)
            loss_init = loss_init + 0.0 * sum(p.sum() for p in pred_init)
            loss_refined = loss_refined + 0.0 * sum(p.sum() for p in pred_refined)
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_init,
                  "loss_box_refine": loss_refined}
        return self._balance(losses, "loss_cls", "loss_box_reg")

    # --- inference ---------------------------------------------------------------------
    def forward_inference(self, images, features, predictions):
        self._check_test_score_thresh()
        pred_logits, _, pred_refined = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 4]
        )
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors, [x[i] for x in pred_logits], [x[i] for x in pred_refined], image_size
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(self, anchors, pred_logits, pred_refined, image_size):
        """The reference's rule: per level the top-k locations by max_c sigma(score), then the
        (location, class) pairs whose sigma(score) passes the threshold, with their refined
        boxes clipped to the image; class-wise NMS over all levels; the best
        ``max_detections_per_image``."""
        boxes, scores, classes = [], [], []
        for anchors_l, logits_l, refined_l in zip(anchors, pred_logits, pred_refined):
            prob = logits_l.float().sigmoid()  # float32, as the reference (force_fp32)
            k = min(self.test_topk_candidates, len(prob))
            top = prob.max(dim=1).values.topk(k).indices
            prob = prob[top]
            loc_idx, class_idx = (prob > self.test_score_thresh).nonzero(as_tuple=True)
            keep = top[loc_idx]
            boxes.append(distances_to_boxes(anchors_l.get_centers()[keep], refined_l[keep]))
            scores.append(prob[loc_idx, class_idx])
            classes.append(class_idx)
        # Clipped before NMS, as the reference.
        return nms_detections(cat(boxes).float(), cat(scores), cat(classes), image_size,
                              self.test_nms_thresh, self.max_detections_per_image,
                              clip_before_nms=True)


def _iou_weighted_giou(pred_boxes, gt_boxes, weights):
    """GIoU loss of paired boxes weighted by ``weights`` (detached IoUs), divided by the
    weights' sum averaged over processes (at least 1), as the reference."""
    loss = (giou_loss(pred_boxes, gt_boxes, reduction="none") * weights).sum()
    return loss / max(reduce_mean(weights.sum()), 1.0)
