"""
Sampling-Free RoI heads (conference paper Sec. 3.4): every proposal (plus the ground-truth
boxes detectron2 appends) trains the box head, with no mini-batch biased sampling. Cascade
R-CNN: stage 1 trains on all proposals too (detectron2's later stages already relabel all
boxes of the previous stage without sampling).
"""
import torch
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

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
    ``SamplingFreeFastRCNNOutputLayers`` (each is guided by its own box loss)."""
