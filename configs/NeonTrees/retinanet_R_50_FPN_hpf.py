# RetinaNet with HPF (level-wise, delta 0.5, w 0.5) on the NEON tree crowns; only the loss
# differs from retinanet_R_50_FPN_focal.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss

from .retinanet_R_50_FPN_focal import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
train.output_dir = "output/neon_trees_retinanet_hpf"
