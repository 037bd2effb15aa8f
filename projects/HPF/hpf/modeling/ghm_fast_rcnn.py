"""
GHM-R in the RoI head of a two-stage detector (GHM paper, "Two-Stage Detector", Table 7):
detectron2's ``FastRCNNOutputLayers`` with the box regression loss replaced by GHM-R.
"""
import torch.nn as nn
from detectron2.layers import nonzero_tuple
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from hpf.losses import BoxRegressionLoss, GHMRLoss, check_loss_type

__all__ = ["GHMRFastRCNNOutputLayers"]


class GHMRFastRCNNOutputLayers(FastRCNNOutputLayers):
    """
    ``FastRCNNOutputLayers`` whose box loss is GHM-R (ASL1 weighted by the inverse gradient
    density, GHM Eq. 17-19) on the deltas of the foreground RoIs: the class-specific deltas
    of each RoI's ground-truth class (or the class-agnostic ones), against the targets of
    ``box2box_transform``. Classification, inference and ``loss_weight`` stay detectron2's.

    GHM-R divides by its count of regression entries, 4 x the foreground RoIs (Eq. 19's 1/N);
    detectron2's smooth L1 divides its sum by all sampled RoIs. With a quarter of the RoIs in
    the foreground (the 512 / 0.25 sampler) the two have the same scale for |d| >> mu.
    """

    def __init__(self, input_shape, *, box_loss: nn.Module = None, **kwargs):
        """
        Args:
            box_loss: a ``hpf.losses.BoxRegressionLoss``, called with the RoIs as one level;
                default ``GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=1.0)``, the
                paper's settings (Sec. "GHM-R Loss" and the official RetinaNet config).
            kwargs: the arguments of ``FastRCNNOutputLayers``; ``smooth_l1_beta`` and
                ``box_reg_loss_type`` are unused.
        """
        super().__init__(input_shape, **kwargs)
        if box_loss is None:
            box_loss = GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=1.0)
        self.box_loss = check_loss_type(box_loss, BoxRegressionLoss, "box_loss")

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[
                fg_inds, gt_classes[fg_inds]
            ]
        fg_target_deltas = self.box2box_transform.get_deltas(
            proposal_boxes[fg_inds], gt_boxes[fg_inds]
        )
        return self.box_loss([fg_pred_deltas], [fg_target_deltas])
