"""
TOOD (Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021) as a detectron2
``DenseDetector``, with the settings of mmdetection's R-50 1x TOOD (``anchor_type``
"anchor_free"): the T-head (task-interactive features, task decomposition with layer attention,
the alignment of the score by a probability map and of the box by a deformable sampling of the
box map), ATSS assignment and focal loss for the first ``initial_iters`` iterations, then Task
Alignment Learning (``TaskAlignedMatcher``, QFL on the normalised alignment targets, GIoU
weighted by them). Both classification losses are pluggable (``PluggableLossMixin``).
"""
import contextlib
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, cat, get_norm
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage
from torchvision.ops import deform_conv2d

from hpf.losses import ClassificationLoss, FocalLoss, QualityFocalLoss, check_loss_type, prior_bias

from .atss import ATSS, centerness_targets
from .dense_detector import (
    PluggableLossMixin,
    iou_targets,
    matched_labels_and_boxes,
    nms_detections,
    reduce_mean,
)
from .matcher import ATSSMatcher
from .task_aligned_assigner import TaskAlignedMatcher, normalized_alignment_targets
from .utils import check_finite_predictions

__all__ = ["TOOD", "TOODHead", "TaskDecomposition", "combined_score_logit"]


class TaskDecomposition(nn.Module):
    """
    Task decomposition of the T-head (TOOD Eq. 2-3): a layer attention
    ``w = sigmoid(fc2(relu(fc1(mean_pool(X)))))`` over the N stacked task-interactive features,
    then a 1x1 reduction conv of the re-weighted stack, norm, ReLU.

    Args:
        channels: channels of each stacked feature (and of the output).
        num_stacked: number N of stacked features.
        norm: detectron2 norm name ("GN", "" for none).
    """

    def __init__(self, channels: int, num_stacked: int, norm: str = "GN"):
        super().__init__()
        self.channels, self.num_stacked = channels, num_stacked
        stacked = channels * num_stacked
        # The reference's down rate 8 N of the N C stacked channels: C / 8 hidden channels.
        hidden = max(channels // 8, 1)
        self.layer_attention = nn.Sequential(
            nn.Conv2d(stacked, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_stacked, 1), nn.Sigmoid(),
        )
        self.reduction = nn.Conv2d(stacked, channels, 1, bias=not norm)
        self.norm = get_norm(norm, channels)
        for m in self.layer_attention:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.reduction.weight, std=0.01)
        if self.reduction.bias is not None:
            nn.init.zeros_(self.reduction.bias)

    def forward(self, stacked: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """
        Args:
            stacked: ``[B, N C, H, W]`` the concatenated task-interactive features.
            pooled: ``[B, N C, 1, 1]`` their spatial mean.
        """
        b, _, h, w = stacked.shape
        attention = self.layer_attention(pooled).view(b, 1, self.num_stacked, 1)
        # Scaling the conv weight per image instead of the N C x H x W stack: the same product,
        # with less memory.
        weight = self.reduction.weight.view(1, self.channels, self.num_stacked, self.channels)
        weight = (attention * weight).view(b, self.channels, -1)
        out = torch.bmm(weight, stacked.flatten(2)).view(b, self.channels, h, w)
        if self.reduction.bias is not None:
            out = out + self.reduction.bias.view(1, -1, 1, 1)
        if self.norm is not None:
            out = self.norm(out)
        return F.relu(out)


class TOODHead(nn.Module):
    """
    The T-head: ``len(conv_dims)`` convs shared by both tasks, whose outputs are stacked; a
    :class:`TaskDecomposition` per task; the classification logits and a probability map M
    (TOOD Eq. 6, its logit); the box as distances from the location (exp, scaled per level),
    turned into a box map and resampled per coordinate at learned offsets O (Eq. 7). The
    predictor layers are the reference's (1x1 conv to C/4, ReLU, 3x3 conv).

    ``forward`` returns three lists over the levels: classification logits ``[B, K, H, W]``,
    probability-map logits ``[B, 1, H, W]`` and boxes ``[B, 4, H, W]`` (XYXY in units of the
    level's stride, the location (x, y) being at ``(x + prior_offset, y + prior_offset)``).

    Args:
        input_shape: ShapeSpec of each input level (same channels on every level).
        num_classes: number of classes K.
        conv_dims: channels of the stacked convs (all equal); its length is the number of
            convs (6 in the reference).
        norm: detectron2 norm name of the convs ("GN" in the reference).
        prior_prob: initial probability of the classification and of the probability map.
        prior_offset: the anchor generator's offset (0 in the reference): where, in stride
            units, a location's centre is.
    """

    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, conv_dims: List[int],
                 norm: str = "GN", prior_prob: float = 0.01, prior_offset: float = 0.0):
        super().__init__()
        if not conv_dims or len(set(conv_dims)) != 1:
            raise ValueError(f"conv_dims must be non-empty with equal entries (the stacked "
                             f"features are concatenated), got {list(conv_dims)}")
        in_channels = {s.channels for s in input_shape}
        if len(in_channels) != 1:
            raise ValueError(f"input_shape must have the same channels on every level, got "
                             f"{sorted(in_channels)}")
        channels, num_stacked = conv_dims[0], len(conv_dims)
        self.num_classes, self.prior_offset = num_classes, float(prior_offset)
        self.inter_convs = nn.ModuleList()
        in_ch = in_channels.pop()
        for _ in range(num_stacked):
            self.inter_convs.append(Conv2d(in_ch, channels, 3, padding=1, bias=not norm,
                                           norm=get_norm(norm, channels), activation=F.relu))
            in_ch = channels
        self.cls_decomposition = TaskDecomposition(channels, num_stacked, norm)
        self.reg_decomposition = TaskDecomposition(channels, num_stacked, norm)
        self.cls_score = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        stacked, hidden = channels * num_stacked, max(channels // 4, 1)
        self.cls_prob = nn.Sequential(nn.Conv2d(stacked, hidden, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(hidden, 1, 3, padding=1))
        # Offsets (y, x) for each of the 4 box coordinates.
        self.reg_offset = nn.Sequential(nn.Conv2d(stacked, hidden, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(hidden, 8, 3, padding=1))
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

        bias = prior_bias(prior_prob)
        for conv in self.inter_convs:
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for module, std in ((self.cls_prob, 0.01), (self.reg_offset, 0.001)):
            for m in module:
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=std)
                    nn.init.zeros_(m.bias)
        for conv in (self.cls_score, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_score.bias, bias)
        nn.init.constant_(self.cls_prob[-1].bias, bias)

    def forward(self, features: List[torch.Tensor]):
        cls_logits, prob_logits, boxes = [], [], []
        for x, scale in zip(features, self.scales):
            stack = []
            for conv in self.inter_convs:
                x = conv(x)
                stack.append(x)
            stacked = torch.cat(stack, dim=1)
            pooled = F.adaptive_avg_pool2d(stacked, 1)
            cls_feat = self.cls_decomposition(stacked, pooled)
            reg_feat = self.reg_decomposition(stacked, pooled)
            cls_logits.append(self.cls_score(cls_feat))
            prob_logits.append(self.cls_prob(stacked))
            distances = (self.bbox_pred(reg_feat).exp() * scale).float()
            boxes.append(self._resample(self._box_map(distances), self.reg_offset(stacked)))
        return cls_logits, prob_logits, boxes

    def _box_map(self, distances):
        """(l, t, r, b) distances [B, 4, H, W] -> XYXY boxes around each location."""
        _, _, h, w = distances.shape
        ys = torch.arange(h, device=distances.device, dtype=distances.dtype) + self.prior_offset
        xs = torch.arange(w, device=distances.device, dtype=distances.dtype) + self.prior_offset
        ys, xs = ys.view(h, 1).expand(h, w), xs.view(1, w).expand(h, w)
        lt = torch.stack([xs, ys]) - distances[:, :2]
        rb = torch.stack([xs, ys]) + distances[:, 2:]
        return torch.cat([lt, rb], dim=1)

    @staticmethod
    def _resample(boxes, offsets):
        """Bilinear sampling of each box coordinate at its own offset (Eq. 7): a 1x1
        deformable conv with unit weight and one deformable group per channel (zero outside
        the map, as the reference)."""
        weight = boxes.new_ones(4, 1, 1, 1)
        return deform_conv2d(boxes, offsets.to(boxes.dtype), weight)


def combined_score_logit(cls_logits: torch.Tensor, prob_logits: torch.Tensor) -> torch.Tensor:
    """
    logit(p) of the aligned score ``p = sqrt(sigmoid(cls) * sigmoid(prob))`` (TOOD Eq. 6),
    float32, finite for finite inputs: with ``u = -log p`` (softplus sums, no cancellation)
    ``logit(p) = -u - log(1 - exp(-u))``; u is kept >= the smallest normal float so that
    ``p -> 1`` gives a large finite logit rather than inf. ``sigmoid`` of it is p, so a loss on
    logits is the reference's loss on the score.
    """
    u = (F.softplus(-cls_logits.float()) + F.softplus(-prob_logits.float())) / 2
    u = u.clamp(min=torch.finfo(u.dtype).tiny)
    return -u - torch.log(-torch.expm1(-u))


class TOOD(PluggableLossMixin, DenseDetector):
    """
    TOOD: the T-head (:class:`TOODHead`) trained with ATSS assignment and ``initial_cls_loss``
    (focal loss) on the aligned score for the first ``initial_iters`` iterations, then with
    Task Alignment Learning: ``TaskAlignedMatcher`` on the predicted scores and boxes,
    ``cls_loss`` (QFL) with the normalised alignment metrics as the positives' targets, GIoU
    weighted by them. The phase is read from the event storage's iteration, so a resumed run
    continues in the right one. The box branch regresses distances from the location, as the
    reference's "anchor_free" type; the anchors (one square 8 x stride anchor per location)
    serve the ATSS assignment and the centre-inside test.
    """

    # The ATSS phase labels anchors exactly as ATSS does (also used to count foreground
    # anchors for the "auto" prior).
    label_anchors = ATSS.label_anchors

    def __init__(
        self,
        *,
        backbone,
        head: TOODHead,
        head_in_features=None,
        anchor_generator,
        num_classes: int,
        initial_iters: int,
        anchor_matcher: Optional[ATSSMatcher] = None,
        alignment_matcher: Optional[TaskAlignedMatcher] = None,
        cls_loss: Optional[nn.Module] = None,
        initial_cls_loss: Optional[nn.Module] = None,
        loss_balance: Optional[nn.Module] = None,
        box_loss_weight: float = 2.0,
        prior_prob: Union[float, str] = 0.01,
        test_score_thresh: Union[float, str] = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
        input_format: str = "BGR",
    ):
        """
        Args:
            initial_iters: iterations trained with ATSS assignment and ``initial_cls_loss``
                (the reference: 4 epochs).
            anchor_matcher: the initial assignment; default ``ATSSMatcher(topk=9)``.
            alignment_matcher: the TAL assignment; default ``TaskAlignedMatcher(topk=13)``.
            cls_loss: the TAL classification loss, given logit(score); default
                ``QualityFocalLoss(beta=2)``. It must take quality targets.
            initial_cls_loss: the ATSS-phase classification loss; default
                ``FocalLoss(alpha=0.25, gamma=2)``.
            box_loss_weight: GIoU weight (2.0 in the reference).
            Other arguments: see :class:`hpf.modeling.ATSS`. The classification is normalised
            as the reference: by the positives (ATSS phase) or the sum of the alignment
            targets (TAL phase), averaged over processes, at least 1.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        if initial_iters < 0:
            raise ValueError(f"initial_iters must be >= 0, got {initial_iters}")
        offset = getattr(anchor_generator, "offset", head.prior_offset)
        if offset != head.prior_offset:
            raise ValueError(f"head.prior_offset ({head.prior_offset}) must equal the anchor "
                             f"generator's offset ({offset}): both place the locations")
        self.num_classes = num_classes
        self.initial_iters = int(initial_iters)
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher or ATSSMatcher(topk=9)
        self.alignment_matcher = alignment_matcher or TaskAlignedMatcher(topk=13)
        self.box_loss_weight = box_loss_weight
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self._init_pluggable(cls_loss if cls_loss is not None else QualityFocalLoss(beta=2.0),
                             loss_balance, prior_prob, test_score_thresh, "mean")
        if not self.cls_loss.uses_quality_targets:
            raise ValueError(f"cls_loss {type(self.cls_loss).__name__} takes no quality "
                             "targets; TOOD's targets are the alignment metrics (use QFL, "
                             "VFL or their progressive forms)")
        self.initial_cls_loss = check_loss_type(
            initial_cls_loss if initial_cls_loss is not None else FocalLoss(0.25, 2.0),
            ClassificationLoss, "initial_cls_loss")

    def _set_prior(self, pi):
        # Both factors of the score start at pi, so the score sqrt(pi * pi) does too.
        super()._set_prior(pi)
        nn.init.constant_(self.head.cls_prob[-1].bias, prior_bias(pi))

    def in_initial_phase(self) -> bool:
        """Whether the current training iteration uses ATSS and ``initial_cls_loss``."""
        return get_event_storage().iter < self.initial_iters

    def _decode(self, predictions):
        """Per-level [B, A_l, K] score logits and [B, A_l, 4] boxes in pixels."""
        cls_logits, prob_logits, boxes = self._transpose_dense_predictions(
            predictions, [self.num_classes, 1, 4])
        score_logits = [combined_score_logit(c, p) for c, p in zip(cls_logits, prob_logits)]
        boxes = [b * s for b, s in zip(boxes, self.anchor_generator.strides)]
        return score_logits, boxes

    # --- training ----------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        score_logits, pred_boxes = self._decode(predictions)
        anchors = self.anchor_generator(features)
        if self.in_initial_phase():
            gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
            alignment_targets = None
        else:
            gt_labels, gt_boxes, alignment_targets = self.label_anchors_aligned(
                anchors, score_logits, pred_boxes, gt_instances)
        return self.losses(anchors, score_logits, gt_labels, pred_boxes, gt_boxes,
                           alignment_targets)

    @torch.no_grad()
    def label_anchors_aligned(self, anchors, score_logits, pred_boxes, gt_instances):
        """Per image: class per anchor (num_classes = background), matched box, and the
        normalised alignment targets (``[B, R]``) of the TAL phase."""
        anchors_all = Boxes.cat(anchors).tensor
        scores = cat(score_logits, dim=1).sigmoid()
        boxes_all = cat(pred_boxes, dim=1)
        gt_labels, matched_boxes, targets = [], [], []
        for i, inst in enumerate(gt_instances):
            match = self.alignment_matcher(anchors_all, scores[i], boxes_all[i],
                                           inst.gt_boxes, inst.gt_classes)
            labels, boxes = matched_labels_and_boxes(match.matched_idxs, inst, anchors_all,
                                                     self.num_classes)
            gt_labels.append(labels)
            matched_boxes.append(boxes)
            targets.append(normalized_alignment_targets(match))
        return gt_labels, matched_boxes, torch.stack(targets)

    def losses(self, anchors, score_logits, gt_labels, pred_boxes, gt_boxes,
               alignment_targets=None):
        """
        Args:
            alignment_targets: ``[B, R]`` normalised alignment targets (TAL phase), or None
                (ATSS phase: centerness box weights, ``initial_cls_loss``).
        """
        check_finite_predictions(pred_boxes)
        labels = self._anchor_labels(gt_labels, ema_initial=100)
        pos_mask = labels.pos_mask
        pred = cat(pred_boxes, dim=1)[pos_mask]
        gt = torch.stack(gt_boxes)[pos_mask]

        if alignment_targets is None:
            pos_anchors = Boxes.cat(anchors).tensor.expand(len(pos_mask), -1, -1)[pos_mask]
            box_weights = centerness_targets(pos_anchors, gt)
            with self._active_cls_loss(self.initial_cls_loss):
                loss_cls = self._classification_loss(
                    score_logits, labels.gt_labels, labels.normalizer, None,
                    lambda: iou_targets(pred, gt, pos_mask))
        else:
            box_weights = alignment_targets[pos_mask]
            normalizer = max(reduce_mean(alignment_targets.sum()), 1.0)
            loss_cls = self._classification_loss(
                score_logits, labels.gt_labels, normalizer, None, lambda: alignment_targets)

        # GIoU weighted by the centerness (ATSS phase) or alignment targets, normalised by
        # their sum averaged over processes, at least 1 (the reference).
        loss_box = (giou_loss(pred, gt) * box_weights).sum()
        loss_box = self.box_loss_weight * loss_box / max(reduce_mean(box_weights.sum()), 1.0)
        if labels.num_pos == 0:  # keep every head parameter in the graph (DDP)
            loss_box = loss_box + 0.0 * sum(b.sum() for b in pred_boxes)
        return self._balance({"loss_cls": loss_cls, "loss_box_reg": loss_box},
                             "loss_cls", "loss_box_reg")

    @contextlib.contextmanager
    def _active_cls_loss(self, loss):
        """Context in which ``self.cls_loss`` is ``loss``: the mixin's classification loss
        reads ``self.cls_loss``."""
        saved = self._modules["cls_loss"]
        self._modules["cls_loss"] = loss
        try:
            yield
        finally:
            self._modules["cls_loss"] = saved

    # --- inference ---------------------------------------------------------------------
    def forward_inference(self, images, features, predictions):
        self._check_test_score_thresh()
        score_logits, pred_boxes = self._decode(predictions)
        return [
            self.inference_single_image([x[i] for x in score_logits],
                                        [x[i] for x in pred_boxes], image_size)
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(self, score_logits, pred_boxes, image_size):
        """The reference's rule: per level the (location, class) pairs whose score passes the
        threshold, the top-k of them; class-wise NMS over all levels; the best
        ``max_detections_per_image``. Non-finite and empty boxes give no detection."""
        boxes, scores, classes = [], [], []
        for logits_l, boxes_l in zip(score_logits, pred_boxes):
            scores_l = logits_l.sigmoid().flatten()
            candidates = (scores_l > self.test_score_thresh).nonzero().squeeze(1)
            scores_l = scores_l[candidates]
            k = min(self.test_topk_candidates, len(candidates))
            scores_l, order = scores_l.topk(k)
            candidates = candidates[order]
            boxes.append(boxes_l[candidates // self.num_classes])
            scores.append(scores_l)
            classes.append(candidates % self.num_classes)
        # Boxes of zero or negative width / height (the per-coordinate resampling can cross
        # the coordinates) are dropped, as the reference's min_bbox_size 0.
        return nms_detections(cat(boxes), cat(scores), cat(classes), image_size,
                              self.test_nms_thresh, self.max_detections_per_image,
                              drop_empty=True)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - GIoU of paired XYXY boxes ``[N, 4]``, float32. Unlike fvcore's it accepts boxes whose
    corners cross (the per-coordinate resampling can make them): their area is taken as
    computed and their intersection is empty, as in the reference's GIoU loss."""
    pred, target = pred.float(), target.float()
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    inter = (torch.min(pred[:, 2:], target[:, 2:]) - torch.max(pred[:, :2], target[:, :2]))
    inter = inter.clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter + eps
    enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2]))
    enclose = enclose.clamp(min=0).prod(dim=1) + eps
    return 1 - (inter / union - (enclose - union) / enclose)
