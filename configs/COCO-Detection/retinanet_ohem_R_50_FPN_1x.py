# RetinaNet R-50 1x with online hard example mining + smooth L1: the "OHEM" row of GHM Table 4
# (31.1 AP, which the paper trained with R-101), in the training setup of the GHM-C config.
from detectron2.config import LazyCall as L

from hpf.losses import OHEMLoss

from .retinanet_ghmc_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

# Sigmoid CE on all positives and, per image, the 3x as many negatives with the largest loss
# (negatives : positives = 3 : 1), divided by the batch's positives.
model.cls_loss = L(OHEMLoss)(neg_pos_ratio=3.0)
