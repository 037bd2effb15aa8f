# RetinaNet R-50 1x with GHM-C + GHM-R (mu 0.02, 10 bins, EMA 0.7, loss weight 10), as the
# official GHM config (libuyu/GHM_Detection experiments/cfg_retinanet_ghm_r50_fpn_1x.py).
from detectron2.config import LazyCall as L

from hpf.losses import GHMRLoss

from .retinanet_ghmc_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.box_loss = L(GHMRLoss)(mu=0.02, bins=10, momentum=0.7, per_level=True, loss_weight=10.0)
