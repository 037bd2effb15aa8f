# ATSS R-50 1x with HPF: progressive focus + hierarchical (level-wise) sampling, delta 0.5,
# w 0.5 (HPF Sec. 5). The paper's HPF numbers use the 135k schedule: atss_hpf_R_50_FPN_1_5x.py.
from detectron2.config import LazyCall as L

from hpf.losses import ProgressiveFocalLoss

from .atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(ProgressiveFocalLoss)(gamma=2.0, delta=0.5, w=0.5, sampling="level")
