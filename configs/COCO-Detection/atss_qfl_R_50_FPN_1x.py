# ATSS R-50 1x with Quality Focal Loss (beta 2), IoU of the decoded box as the target.
# Deviation: GFL also drops the centerness branch; hpf.modeling.ATSS always has it, so it stays.
from detectron2.config import LazyCall as L

from hpf.losses import QualityFocalLoss

from .atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(QualityFocalLoss)(beta=2.0)
