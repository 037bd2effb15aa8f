# RetinaNet R-50 1x with plain sigmoid cross entropy on all anchors and smooth L1: the "CE"
# baseline of GHM Table 4 (28.6 AP), in the training setup of the GHM-C config.
from detectron2.config import LazyCall as L

from hpf.losses import GHMCLoss

from .retinanet_ghmc_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

# GHM-C with one unit region and no EMA gives every example beta = 1 (GHM Eq. 10 with
# epsilon = 1): the CE of each FPN level averaged over its (anchor, class) entries, levels
# summed as GHM-C's. GHM Sec. "GHM-C Loss": bias from pi = 0.01 (inherited) and the CE x20, so
# that the first loss is about 1 (5 levels x 20 x -log 0.99 = 1.005).
model.cls_loss = L(GHMCLoss)(bins=1, momentum=0.0, per_level=True, loss_weight=20.0)
