"""
Sampling-Free RoI heads (conference paper Sec. 3.4): every proposal (plus the ground-truth
boxes detectron2 appends) trains the box head, with no mini-batch biased sampling. Cascade
R-CNN: stage 1 trains on all proposals too (detectron2's later stages already relabel all
boxes of the previous stage without sampling).
"""
from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.utils.events import get_event_storage

__all__ = ["SamplingFreeCascadeROIHeads", "SamplingFreeROIHeadsMixin", "SamplingFreeROIHeads"]


class SamplingFreeROIHeadsMixin:
    """Replaces ``ROIHeads._sample_proposals``: labels every proposal as detectron2 does and
    keeps all of them except the ignored ones (label -1, when the matcher has an ignore band)."""

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.full_like(matched_idxs, self.num_classes)
        keep = (labels >= 0).nonzero().squeeze(1)
        return keep, labels[keep]


class SamplingFreeROIHeads(SamplingFreeROIHeadsMixin, StandardROIHeads):
    """``StandardROIHeads`` (Faster / Mask R-CNN) trained on all proposals. Pair it with
    ``SamplingFreeFastRCNNOutputLayers`` as the box predictor; the mask branch is unchanged
    (it trains on the foreground proposals, as in detectron2)."""


class SamplingFreeCascadeROIHeads(SamplingFreeROIHeadsMixin, CascadeROIHeads):
    """``CascadeROIHeads`` trained on all proposals; give every stage a
    ``SamplingFreeFastRCNNOutputLayers``.

    Guided loss scaling, two readings of "we regard the multiple RoI-subnets as one RoI-subnet"
    (conference paper Sec. 3.4):

    * ``joint_loss_balance=None`` (default): each stage's predictor scales its classification
      loss by its own box loss.
    * ``joint_loss_balance=GuidedLossScale(...)``: one ratio for all stages, sum of the box
      losses over sum of the classification losses (Eq. 8 over the stages together); every
      stage's CE is multiplied by it. Sampling-Free predictors must then have
      ``scale_classification=False``. Logs ``roi_head/guided_ratio`` without a stage prefix.
    """

    @configurable
    def __init__(self, *, joint_loss_balance: Optional[torch.nn.Module] = None, **kwargs):
        super().__init__(**kwargs)
        for k, predictor in enumerate(self.box_predictor):
            # detectron2's own predictors leave their CE unscaled.
            if joint_loss_balance is not None and getattr(predictor, "scale_classification", False):
                raise ValueError(
                    f"box_predictors[{k}].scale_classification=True with a joint_loss_balance: "
                    "the classification loss would be scaled twice; set it to False"
                )
        if joint_loss_balance is not None and joint_loss_balance.mode not in ("plain", "constant"):
            raise ValueError(
                "joint_loss_balance must have mode 'plain' or 'constant' (one weight for every "
                f"stage), got {joint_loss_balance.mode!r}"
            )
        self.joint_loss_balance = joint_loss_balance

    def _forward_box(self, features, proposals, targets=None):
        outputs = super()._forward_box(features, proposals, targets)
        if not self.training or self.joint_loss_balance is None:
            return outputs
        stages = range(self.num_cascade_stages)
        cls = [outputs[f"loss_cls_stage{k}"] for k in stages]
        box = [outputs[f"loss_box_reg_stage{k}"] for k in stages]
        self.joint_loss_balance.update_ratio(sum(cls), sum(box))
        for k in stages:
            outputs[f"loss_cls_stage{k}"] = self.joint_loss_balance.weighted(cls[k])
        get_event_storage().put_scalar(
            "roi_head/guided_ratio", float(self.joint_loss_balance.ratio)
        )
        return outputs
