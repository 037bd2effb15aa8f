# RetinaNet R-50 1x with HPF (level-wise, delta 0.5, w 0.5): HPF Table 8 "RetinaNet w/HPF".
# Only the loss differs from retinanet_R_50_FPN_1x (detectron2 settings, EMA normalizer): the paper
# ran mmdetection's RetinaNet (no UMOP config exists), so compare the gain, not the absolute AP.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss

from .retinanet_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
