# FCOS R-50 1x (detectron2's FCOS) with HPF (level-wise, delta 0.5, w 0.5); only the loss
# differs from fcos_R_50_FPN_1x. No paper number (HPF Table 8 has no FCOS row).
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss

from .fcos_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
