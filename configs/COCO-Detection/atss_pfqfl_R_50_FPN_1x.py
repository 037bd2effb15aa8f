# ATSS R-50 1x with PF-QFL (HPF Eq. 6): QFL's beta -> gamma_ad, plus alpha_ad / (1 - alpha_ad)
# on the positive / negative terms; level-wise, delta 0.5; w 1 and loss_weight 2 make it equal
# QFL at gamma_ad = 2 (w = alpha * gamma, Sec. 5.3, with QFL's even balance).
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveQualityFocalLoss

from .atss_qfl_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveQualityFocalLoss)(
    gamma=2.0, delta=0.5, w=1.0, loss_weight=2.0, sampling="level"
)
