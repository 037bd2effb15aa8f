# RetinaNet R-50 1x with GHM-C + smooth L1 and no EMA on the bin counts: GHM Table 1 ("EMA is
# not applied here"), 30 unit regions (35.8 AP). The table's other M are overrides of
# model.cls_loss.bins; see configs/COCO-Detection/README.md.
from .retinanet_ghmc_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

# momentum 0: each iteration's own counts R_j are the density (Eq. 9), not S_j of Eq. 12.
model.cls_loss.momentum = 0.0
