# VarifocalNet with PF-VFL (HPF Eq. 7) instead of VFL: the one line that changes.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveVarifocalLoss

from .vfnet_R18h_FPN_vfl import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveVarifocalLoss)(gamma=2.0, delta=0.5, w=1.5, sampling="level")
train.output_dir = "output/shapes_vfnet_hpf"
