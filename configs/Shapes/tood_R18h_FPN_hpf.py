# TOOD with HPF: PF-QFL instead of QFL and HPF instead of the initial phase's focal loss, the
# lines that change.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss, ProgressiveQualityFocalLoss

from .tood_R18h_FPN_qfl import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveQualityFocalLoss)(
    gamma=2.0, delta=0.5, w=1.0, loss_weight=2.0, sampling="level"
)
model.initial_cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
train.output_dir = "output/shapes_tood_hpf"
