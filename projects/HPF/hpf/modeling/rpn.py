"""
Sampling-Free RPN (conference paper Sec. 3.4 "Applications to Different Detectors"): every
anchor labelled foreground or background trains the objectness, with no mini-batch sampling.
"""
from typing import Optional, Union

import torch
from detectron2.modeling.proposal_generator import RPN
from detectron2.utils.events import get_event_storage

from hpf.losses import optimal_prior, prior_bias

from .priors import anchors_for_image_size
from .utils import log_metrics

__all__ = ["SamplingFreeRPN"]


class SamplingFreeRPN(RPN):
    """
    detectron2's ``RPN`` trained the Sampling-Free way:

    * no sampling: ``_subsample_labels`` keeps every label (ignored anchors, -1, stay out);
      ``keep_sampling=True`` keeps detectron2's mini-batch biased sampling instead (the hybrid
      rows of the paper's Table 4);
    * objectness: sigmoid CE summed over all valid anchors, divided by the number of positive
      anchors, then rescaled by ``loss_balance`` against the box loss (guided loss scaling,
      Eq. 7-8; the official RPN's is ``GuidedLossScale(factor=1.0)``, the ratio recomputed
      every iteration). ``None``: no guided scaling;
    * ``prior_prob``: the objectness bias b = -log((1 - pi) / pi) (Eq. 9-10). ``"auto"``
      computes pi = N_f / N (one class) from the training data's anchor matching before
      training (``hpf.modeling.priors``); a float sets it; None keeps detectron2's init (0).

    * ``box_reg_normalizer``: ``"foreground"`` divides the summed box loss by 4 x the positive
      anchors (a mean over their coordinates; the official code then halves it: configure
      that with detectron2's ``loss_weight``, as ``use_sampling_free_rpn`` does);
      ``"batch"`` keeps detectron2's division by ``batch_size_per_image`` x images, a sampled
      batch size that Sampling-Free no longer has. It matters through the guided ratio: the
      objectness loss is rescaled to the box loss's value, so with ``"batch"`` its weight
      would follow positives / 256 (~0.08 on the shapes data, ~0.5-1 on COCO).
    """

    def __init__(
        self,
        *,
        loss_balance: Optional[torch.nn.Module] = None,
        prior_prob: Union[float, str, None] = "auto",
        box_reg_normalizer: str = "foreground",
        keep_sampling: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.keep_sampling = keep_sampling
        if box_reg_normalizer not in ("foreground", "batch"):
            raise ValueError(
                f"box_reg_normalizer must be 'foreground' or 'batch', got {box_reg_normalizer!r}"
            )
        self.box_reg_normalizer = box_reg_normalizer
        if prior_prob not in (None, "auto") and (
            not isinstance(prior_prob, (int, float)) or not 0 < prior_prob < 1
        ):
            raise ValueError(f"prior_prob must be in (0, 1), 'auto' or None, got {prior_prob!r}")
        self.loss_balance = loss_balance
        self.prior_prob = prior_prob
        # (N_f, N) of the training data behind "auto"; kept in the checkpoint.
        self.register_buffer("foreground_stats", torch.zeros(2, dtype=torch.float64))
        if prior_prob not in (None, "auto"):
            self._set_prior(float(prior_prob))

    def _set_prior(self, pi):
        torch.nn.init.constant_(self.rpn_head.objectness_logits.bias, prior_bias(pi))

    def _subsample_labels(self, label):
        if self.keep_sampling:
            return super()._subsample_labels(label)
        return label  # Sampling-Free: all anchors train

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        losses = super().losses(
            anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        # detectron2 divides both losses by batch_size_per_image x images; the objectness
        # is divided by the number of positives instead, the box loss by 4 x positives.
        num_pos = sum((x == 1).sum() for x in gt_labels).clamp(min=1)
        d2_normalizer = self.batch_size_per_image * len(gt_labels)
        loss_cls = losses["loss_rpn_cls"] * (d2_normalizer / num_pos)
        if self.box_reg_normalizer == "foreground":
            losses["loss_rpn_loc"] = losses["loss_rpn_loc"] * (d2_normalizer / (4 * num_pos))
        losses["loss_rpn_cls"] = loss_cls
        storage = get_event_storage()
        if self.loss_balance is not None:
            losses = self.loss_balance(losses, "loss_rpn_cls", "loss_rpn_loc")
            log_metrics(self.loss_balance, prefix="rpn/")
        pi = self._prior_value()
        if pi is not None:
            storage.put_scalar("rpn/prior_prob", pi)
        return losses

    def _prior_value(self):
        if self.prior_prob == "auto":
            n_f, n = self.foreground_stats.tolist()
            return n_f / n if n > 0 else None
        return self.prior_prob

    # The foreground-statistics protocol of hpf.modeling.priors.
    def needs_foreground_stats(self) -> bool:
        return self.prior_prob == "auto"

    def count_foreground(self, image_size, gt_instances, feature_shapes):
        """(N_f, N) of one batch: anchors labelled 1 / not ignored by the RPN's matcher."""
        strides = [feature_shapes[f].stride for f in self.in_features]
        device = self.foreground_stats.device
        anchors = anchors_for_image_size(self.anchor_generator, strides, image_size, device)
        labels = torch.stack(self.label_and_sample_anchors(anchors, gt_instances)[0])
        return (labels == 1).sum(), (labels >= 0).sum()

    def set_foreground_stats(self, num_foreground, num_total):
        self.foreground_stats.copy_(torch.tensor([num_foreground, num_total]))
        if self.prior_prob == "auto":
            self._set_prior(optimal_prior(num_foreground, num_total, 1))

    def foreground_stats_record(self, num_foreground, num_total):
        pi = optimal_prior(num_foreground, num_total, 1)
        return {"num_classes": 1, "prior_prob": pi, "prior_bias": prior_bias(pi)}
