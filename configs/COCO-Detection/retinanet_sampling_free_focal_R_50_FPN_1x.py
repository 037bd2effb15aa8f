# Sampling-Free on top of focal loss (conference Table 3, last column; journal Table IV(a)):
# the Sampling-Free config (prior, guided loss scaling, threshold) with focal loss (0.25, 2)
# instead of CE.
from detectron2.config import LazyCall as L

from hpf.losses import FocalLoss

from .retinanet_sampling_free_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(FocalLoss)(alpha=0.25, gamma=2.0)
