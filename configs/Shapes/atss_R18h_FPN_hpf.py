# ATSS with HPF (progressive focus + hierarchical sampling) instead of focal loss: the one line
# that changes.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss

from .atss_R18h_FPN_focal import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
train.output_dir = "output/shapes_atss_hpf"
