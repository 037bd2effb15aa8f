# TOOD R-50 1x with HPF: each focal-type loss replaced by its progressive form, level-wise,
# delta 0.5, each equal to its base loss at gamma_ad = 2: PF-QFL (HPF Eq. 6; w 1, loss_weight
# 2) for the QFL of Task Alignment Learning, and HPF (Eq. 2-5; w 0.5) for the focal loss of
# the initial ATSS phase.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss, ProgressiveQualityFocalLoss

from .tood_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveQualityFocalLoss)(
    gamma=2.0, delta=0.5, w=1.0, loss_weight=2.0, sampling="level"
)
model.initial_cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
