# ATSS R-50 1x with Varifocal Loss (alpha 0.75, gamma 2; IoU-weighted positives).
# Deviation: only the loss of VarifocalNet (no star-dconv refinement, centerness branch kept).
from detectron2.config import LazyCall as L

from hpf.losses import VarifocalLoss

from .atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(VarifocalLoss)(alpha=0.75, gamma=2.0)
