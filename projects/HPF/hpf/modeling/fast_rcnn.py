"""
The box predictor of Sampling-Free RoI heads: detectron2's ``FastRCNNOutputLayers`` with the
classification loss rescaled by guided loss scaling against the box loss.
"""
from typing import Optional, Union

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from hpf.losses import GuidedLossScale, adaptive_threshold

from .utils import log_metrics

__all__ = ["SamplingFreeFastRCNNOutputLayers"]


class SamplingFreeFastRCNNOutputLayers(FastRCNNOutputLayers):
    """
    * ``loss_balance``: the softmax CE (detectron2's, mean over the RoIs) is rescaled to
      ``factor x`` the box loss (guided loss scaling, Eq. 7-8). Default ``factor=2``: the
      paper's rule for RoI heads ("the box loss is ~2x the classification loss" under biased
      sampling, kept for consistency). No optimal bias here: the RPN already removed most of
      the imbalance (paper Sec. 3.4).
    * ``scale_classification=False`` leaves the CE unscaled (and ``loss_balance`` unused), for a
      cascade head that scales all its stages with one ratio
      (``SamplingFreeCascadeROIHeads(joint_loss_balance=...)``).
    * ``box_reg_normalizer``: ``"foreground"`` divides the summed box loss by 4 x the
      foreground RoIs (a mean over their coordinates, the official code's N_pos x 4);
      ``"rois"`` keeps detectron2's division by all RoIs, which with ~1-2k RoIs per image
      instead of 512 would shrink the box loss (and, through the guided ratio, the
      classification loss) 2-4x against the baseline. The two agree when a quarter of the RoIs
      are foreground, as in detectron2's sampled batch.
    * ``test_score_thresh``: a float (detectron2: 0.05; official Sampling-Free: 1e-3) or
      ``"auto"``: the adaptive threshold N_f / N (Table 2) of the RoIs this stage trained on,
      counted over the whole training (summed over processes, kept in the checkpoint).

    Logs ``roi_head/guided_ratio`` (L_reg / L_cls, before the factor; not when
    ``scale_classification=False``), ``roi_head/num_fg`` and ``roi_head/num_rois`` (per image)
    every iteration; Cascade R-CNN prefixes them with ``stage{k}/``.
    """

    def __init__(
        self,
        input_shape,
        *,
        loss_balance: Optional[torch.nn.Module] = None,
        scale_classification: bool = True,
        box_reg_normalizer: str = "foreground",
        test_score_thresh: Union[float, str] = 0.05,
        **kwargs,
    ):
        if box_reg_normalizer not in ("foreground", "rois"):
            raise ValueError(
                f"box_reg_normalizer must be 'foreground' or 'rois', got {box_reg_normalizer!r}"
            )
        if test_score_thresh != "auto" and not isinstance(test_score_thresh, (int, float)):
            raise ValueError(
                f"test_score_thresh must be a number or 'auto', got {test_score_thresh!r}"
            )
        # detectron2 would silently take a negative beta as L1 (beta < 1e-5).
        if kwargs.get("smooth_l1_beta", 0.0) < 0:
            raise ValueError(f"smooth_l1_beta must be >= 0, got {kwargs['smooth_l1_beta']!r}")
        super().__init__(input_shape, test_score_thresh=test_score_thresh, **kwargs)
        if not scale_classification and loss_balance is not None:
            raise ValueError("loss_balance is unused with scale_classification=False; leave it None")
        if not scale_classification:
            self.loss_balance = None
        else:
            self.loss_balance = GuidedLossScale(factor=2.0) if loss_balance is None else loss_balance
        self.box_reg_normalizer = box_reg_normalizer
        # (foreground RoIs, RoIs) this stage trained on, summed over iterations and processes:
        # what test_score_thresh="auto" reads.
        self.register_buffer("foreground_stats", torch.zeros(2, dtype=torch.float64))

    def losses(self, predictions, proposals):
        losses = super().losses(predictions, proposals)
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else torch.empty(0)
        num_rois = gt_classes.numel()
        num_fg = ((gt_classes >= 0) & (gt_classes < self.num_classes)).sum().item()
        if self.box_reg_normalizer == "foreground":
            # detectron2 divided the sum by the number of RoIs.
            losses["loss_box_reg"] = losses["loss_box_reg"] * (max(num_rois, 1) / max(4 * num_fg, 1))
        storage = get_event_storage()
        if self.scale_classification:
            losses = self.loss_balance(losses, "loss_cls", "loss_box_reg")
            log_metrics(self.loss_balance, prefix="roi_head/")
        self._update_foreground_stats(num_fg, num_rois)
        num_images = max(len(proposals), 1)
        storage.put_scalar("roi_head/num_fg", num_fg / num_images)
        storage.put_scalar("roi_head/num_rois", num_rois / num_images)
        return losses

    @property
    def scale_classification(self) -> bool:
        return self.loss_balance is not None

    def _update_foreground_stats(self, num_fg, num_rois):
        counts = torch.tensor([num_fg, num_rois], dtype=torch.float64,
                              device=self.foreground_stats.device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(counts)
        self.foreground_stats += counts

    # A property so that every reader (also CascadeROIHeads' inference) gets the adaptive
    # value, computed when read (at inference) rather than kept up to date every iteration.
    @property
    def test_score_thresh(self):
        if self._test_score_thresh != "auto":
            return self._test_score_thresh
        num_fg, num_rois = self.foreground_stats.tolist()
        if num_rois <= 0:
            raise RuntimeError(
                "test_score_thresh='auto' needs the RoI statistics of training: load a "
                "checkpoint trained with it, or set a float test_score_thresh."
            )
        return adaptive_threshold(num_fg, num_rois)

    @test_score_thresh.setter
    def test_score_thresh(self, value):
        self._test_score_thresh = value
