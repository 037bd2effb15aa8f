# VarifocalNet R-50 1x with PF-VFL (HPF Eq. 7) instead of VFL: the one line that changes.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveVarifocalLoss

from .vfnet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

# The settings of atss_pfvfl_R_50_FPN_1x: w = alpha * gamma of VFL = 1.5, level-wise sampling.
model.cls_loss = L(ProgressiveVarifocalLoss)(gamma=2.0, delta=0.5, w=1.5, sampling="level")
