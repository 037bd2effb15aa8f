# Faster R-CNN R-50-FPN 1x with GHM-R as the RoI head's box loss: GHM Table 7 "GHM-R" (37.4 AP
# minival; its smooth-L1 baseline 36.4). Everything else is faster_rcnn_R_50_FPN_1x.py.
from detectron2.config import LazyCall as L

from hpf.losses import GHMRLoss
from hpf.modeling import GHMRFastRCNNOutputLayers

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.box_predictor._target_ = GHMRFastRCNNOutputLayers
# mu 0.02, 10 unit regions, EMA 0.7: the paper's and the official RetinaNet GHM-R settings.
# Loss weight 1: GHM-R's mean over the foreground coordinates has the scale of detectron2's
# RoI box loss at 25% foreground (the paper states no weight for the two-stage run).
model.roi_heads.box_predictor.box_loss = L(GHMRLoss)(
    mu=0.02, bins=10, momentum=0.7, loss_weight=1.0
)
