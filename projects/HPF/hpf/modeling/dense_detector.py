"""
The ingredients HPF, GHM and Sampling-Free change in a detectron2 ``DenseDetector``, as
constructor arguments: the classification loss, the loss balance, the prior and the test
threshold. Subclasses override only ``losses``; labelling, heads and inference stay detectron2's.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from detectron2.layers import batched_nms, cat
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from hpf.losses import (
    ClassificationLoss,
    FocalLoss,
    adaptive_threshold,
    check_loss_type,
    optimal_prior,
    prior_bias,
)

from .priors import anchors_for_image_size
from .utils import log_metrics

__all__ = [
    "AnchorLabels",
    "PluggableLossMixin",
    "iou_targets",
    "matched_labels_and_boxes",
    "nms_detections",
    "quality_targets",
    "reduce_mean",
]


def reduce_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over processes (mmdetection's ``reduce_mean``), as a float."""
    if comm.get_world_size() > 1:
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
    return value.item() / comm.get_world_size()


class AnchorLabels(NamedTuple):
    """The labels of a batch's anchors and the counts every dense loss needs."""

    gt_labels: torch.Tensor  # [B, R]: class, num_classes = background, -1 = ignored
    valid_mask: torch.Tensor  # [B, R]: not ignored
    pos_mask: torch.Tensor  # [B, R]: foreground
    num_pos: int
    normalizer: float  # what the classification loss is divided by


class PluggableLossMixin:
    """
    The ingredients the papers change, for a ``DenseDetector``:

    * ``cls_loss``: a ``hpf.losses.ClassificationLoss``, called with per-level ``[B, A_l, C]``
      logits and targets (IoU-quality targets when its ``uses_quality_targets``); what its
      ``metrics()`` returns is logged every iteration;
    * ``loss_balance``: ``None`` or ``GuidedLossScale`` (Sampling-Free guided scaling of the
      classification loss against the other losses, conference paper Eq. 7-8, in one of its
      official forms), called on the whole loss dict; its ``metrics()`` are logged;
    * ``prior_prob``: a float, or ``"auto"`` for the optimal bias of Sampling-Free (Eq. 9-10),
      set from the training data by :func:`hpf.modeling.priors.initialize_auto_prior`;
    * ``test_score_thresh``: a float, or ``"auto"`` for the adaptive threshold N_f / N.

    ``loss_normalizer``: ``"ema"`` keeps detectron2's running average of the positives per
    process; ``"mean"`` divides by the positives of the batch averaged over processes (the
    mmdetection / paper convention, ``reduce_mean``).

    ``level_statistics``: None, or a ``hpf.analysis.LevelStatisticsRecorder`` that the
    classification loss shows its per-level logits, targets and positives (set by the
    ``RecordLevelStatistics`` training hook).
    """

    level_statistics = None

    def _init_pluggable(self, cls_loss, loss_balance, prior_prob, test_score_thresh,
                        loss_normalizer):
        if loss_normalizer not in ("ema", "mean"):
            raise ValueError(f"loss_normalizer must be 'ema' or 'mean', got {loss_normalizer!r}")
        self.cls_loss = (
            FocalLoss() if cls_loss is None
            else check_loss_type(cls_loss, ClassificationLoss, "cls_loss")
        )
        self.loss_balance = loss_balance
        self.normalizer_mode = loss_normalizer  # (detectron2 keeps its EMA in self.loss_normalizer)
        self.prior_prob = prior_prob
        self.auto_test_score_thresh = test_score_thresh == "auto"
        # Foreground statistics (N_f, N) of the training data behind "auto": kept in the
        # checkpoint so that --eval-only gets the same adaptive threshold.
        self.register_buffer("foreground_stats", torch.zeros(2, dtype=torch.float64))
        if prior_prob != "auto":
            self._set_prior(float(prior_prob))
        if self.auto_test_score_thresh:
            self.test_score_thresh = None  # set by set_foreground_stats
        else:
            self.test_score_thresh = float(test_score_thresh)

    # --- priors and thresholds ---------------------------------------------------------
    def _set_prior(self, pi):
        torch.nn.init.constant_(self.head.cls_score.bias, prior_bias(pi))

    def set_foreground_stats(self, num_foreground, num_total, set_prior=True):
        """Record (N_f, N) and apply what is "auto": the prior pi = N_f / (N C) into the
        classification bias, and the test threshold N_f / N."""
        self.foreground_stats.copy_(torch.tensor([num_foreground, num_total]))
        if set_prior and self.prior_prob == "auto":
            self._set_prior(optimal_prior(num_foreground, num_total, self.num_classes))
        self._apply_auto_threshold()

    # The foreground-statistics protocol of hpf.modeling.priors.
    def needs_foreground_stats(self) -> bool:
        return self.prior_prob == "auto" or self.auto_test_score_thresh

    def count_foreground(self, image_size, gt_instances, feature_shapes):
        """(N_f, N) of one batch: anchors labelled foreground / not ignored by
        ``label_anchors``."""
        strides = [feature_shapes[f].stride for f in self.head_in_features]
        anchors = anchors_for_image_size(self.anchor_generator, strides, image_size, self.device)
        labels = torch.stack(self.label_anchors(anchors, gt_instances)[0])
        valid = labels >= 0
        return (valid & (labels != self.num_classes)).sum(), valid.sum()

    def foreground_stats_record(self, num_foreground, num_total):
        pi = optimal_prior(num_foreground, num_total, self.num_classes)
        auto = self.prior_prob == "auto"
        return {
            "num_classes": self.num_classes,
            "prior_prob": pi if auto else self.prior_prob,
            "prior_bias": prior_bias(pi) if auto else None,
            "adaptive_threshold": adaptive_threshold(num_foreground, num_total),
            "test_score_thresh": self.test_score_thresh,
        }

    def _apply_auto_threshold(self):
        if self.auto_test_score_thresh and self.foreground_stats[1] > 0:
            n_f, n = self.foreground_stats.tolist()
            self.test_score_thresh = adaptive_threshold(n_f, n)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._apply_auto_threshold()

    def _check_test_score_thresh(self):
        if self.test_score_thresh is None:
            raise RuntimeError(
                "test_score_thresh='auto' needs the foreground statistics of the training data: "
                "load a checkpoint trained with it, or call set_foreground_stats()."
            )

    def forward_inference(self, images, features, predictions):
        self._check_test_score_thresh()
        return super().forward_inference(images, features, predictions)

    # --- losses ------------------------------------------------------------------------
    def _normalizer(self, num_pos: int, ema_initial: float) -> float:
        if self.normalizer_mode == "ema":
            return self._ema_update("loss_normalizer", max(num_pos, 1), ema_initial)
        return max(reduce_mean(torch.tensor(float(num_pos), device=self.device)), 1.0)

    def _anchor_labels(self, gt_labels, ema_initial: float) -> AnchorLabels:
        """The start of every dense ``losses``: per-image labels stacked to ``[B, R]``, their
        masks, ``num_pos_anchors`` logged, and the normalizer (``ema_initial``: the start of
        detectron2's running average)."""
        gt_labels = torch.stack(gt_labels)
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos / len(gt_labels))
        return AnchorLabels(gt_labels, valid_mask, pos_mask, num_pos,
                            self._normalizer(num_pos, ema_initial))

    def _classification_loss(self, pred_logits, gt_labels, normalizer, valid_mask=None,
                             quality=None):
        """
        Args:
            pred_logits: per-level ``[B, A_l, C]`` logits.
            gt_labels: ``[B, R]``: class, ``num_classes`` = background, -1 = ignored.
            normalizer: what the loss is divided by (:meth:`_anchor_labels`).
            valid_mask: ``[B, R]`` or None: False anchors add no loss.
            quality: a function returning the ``[B, R]`` IoU targets of the positives, called
                only when ``cls_loss.uses_quality_targets``.
        """
        # float32 targets whatever the logits' dtype: IoU-quality targets rounded to the
        # bfloat16 / float16 logits of a mixed-precision head would lose their low bits.
        targets = F.one_hot(gt_labels.clamp(min=0), self.num_classes + 1)[..., :-1]
        targets = targets.to(torch.promote_types(pred_logits[0].dtype, torch.float32))
        if self.cls_loss.uses_quality_targets:
            if quality is None:
                raise ValueError(f"{type(self.cls_loss).__name__} needs IoU-quality targets, "
                                 f"which {type(self).__name__} does not provide")
            targets = targets * quality().unsqueeze(-1).to(targets.dtype)
        sizes = [x.shape[1] for x in pred_logits]
        targets = list(targets.split(sizes, dim=1))
        valid = None if valid_mask is None else list(valid_mask.split(sizes, dim=1))
        loss = self.cls_loss(pred_logits, targets, normalizer, valid)
        positive = (gt_labels >= 0) & (gt_labels != self.num_classes)
        if self.level_statistics is not None:
            self.level_statistics.observe(pred_logits, targets, positive.split(sizes, dim=1),
                                          valid)
        self._log_level_stats(positive, sizes)
        return loss

    def _balance(self, losses, cls_key, box_key):
        """The loss dict weighted by ``loss_balance`` (unchanged without one); logs its
        metrics."""
        if self.loss_balance is None:
            return losses
        losses = self.loss_balance(losses, cls_key, box_key)
        log_metrics(self.loss_balance)
        return losses

    def _log_level_stats(self, positive, sizes):
        """Logs the positives per image of each level (``positive``: ``[B, R]`` bool) and the
        loss's metrics."""
        storage = get_event_storage()
        pos = positive.sum(0)
        per_level = torch.stack([n.sum() for n in pos.split(sizes)]).tolist()  # one sync
        for level, n in enumerate(per_level):
            storage.put_scalar(f"num_pos/level{level}", n / len(positive))
        log_metrics(self.cls_loss)


def matched_labels_and_boxes(matched_idxs, gt_instances, anchors, num_classes):
    """Per anchor of one image (``anchors``: their ``[N, 4]`` tensor), from its matched
    ground-truth index (-1: background): the class (``num_classes`` for background) and the
    matched box (zeros for background)."""
    fg = matched_idxs >= 0
    labels = torch.full_like(matched_idxs, num_classes)
    boxes = torch.zeros_like(anchors)
    if len(gt_instances) > 0:
        labels[fg] = gt_instances.gt_classes[matched_idxs[fg]]
        boxes[fg] = gt_instances.gt_boxes.tensor[matched_idxs[fg]]
    return labels, boxes


def nms_detections(boxes, scores, classes, image_size, nms_thresh, max_detections,
                   clip_before_nms=False, drop_empty=False):
    """
    The detections of one image from its candidates over all levels.

    Non-finite candidates (a diverged model) give no detection, as in detectron2's R-CNN
    inference (``Boxes.clip`` would fail on them); then class-wise NMS and the best
    ``max_detections``, with the boxes clipped to the image.

    Args:
        boxes, scores, classes: ``[N, 4]`` boxes (XYXY), ``[N]`` scores and class indices.
        clip_before_nms: clip before NMS (the mmdetection references that decode with the
            image's shape) instead of after (detectron2).
        drop_empty: also drop boxes of zero or negative width or height.
    """
    keep = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if drop_empty:
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes = Boxes(boxes[keep]), scores[keep], classes[keep]
    if clip_before_nms:
        boxes.clip(image_size)
    keep = batched_nms(boxes.tensor, scores, classes, nms_thresh)[:max_detections]
    result = Instances(image_size)
    result.pred_boxes = boxes[keep]
    if not clip_before_nms:
        result.pred_boxes.clip(image_size)
    result.scores = scores[keep]
    result.pred_classes = classes[keep]
    return result


def iou_targets(pred_boxes, gt_boxes, pos_mask):
    """``[B, R]`` quality targets: IoU of each positive's decoded box (``[P, 4]``, rows in
    ``pos_mask`` order) with its ground truth, 0 elsewhere, detached (GFL / VarifocalNet)."""
    quality = torch.zeros(pos_mask.shape, device=pos_mask.device)
    iou = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(gt_boxes))
    quality[pos_mask] = iou.nan_to_num(0.0)  # 0/0 of two empty boxes
    return quality


def quality_targets(box2box_transform, anchors, pred_deltas, gt_boxes, pos_mask):
    """:func:`iou_targets` from per-level deltas and per-image matched boxes: the quality
    target of QFL / VFL and their progressive forms. Boxes are decoded in float32: under
    autocast the deltas may be bfloat16 / float16, which ``Box2BoxTransformLinear`` keeps."""
    with torch.no_grad():
        anchors = Boxes.cat(anchors).tensor.expand(len(gt_boxes), -1, -1)[pos_mask]
        deltas = cat(pred_deltas, dim=1)[pos_mask].float()
        pred = box2box_transform.apply_deltas(deltas, anchors)
        return iou_targets(pred, torch.stack(gt_boxes)[pos_mask], pos_mask)
