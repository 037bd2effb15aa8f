# GFL with PF-QFL (HPF Eq. 6) instead of QFL: the one line that changes.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveQualityFocalLoss

from .gfl_R18h_FPN_qfl import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveQualityFocalLoss)(
    gamma=2.0, delta=0.5, w=1.0, loss_weight=2.0, sampling="level"
)
train.output_dir = "output/shapes_gfl_hpf"
