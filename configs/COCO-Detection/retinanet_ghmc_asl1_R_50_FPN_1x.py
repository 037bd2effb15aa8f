# RetinaNet R-50 1x with GHM-C + ASL1 (authentic smooth L1, GHM Eq. 17, mu 0.02) without GHM
# weighting: the "ASL1" row of GHM Table 5 (35.7 AP; SL1 35.8, GHM-R 36.4).
from .retinanet_ghm_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

# GHM-R with one unit region and no EMA: every beta = 1 (Eq. 10 with epsilon = 1), so the loss
# is sqrt(d^2 + mu^2) - mu averaged over the positives' coordinates. mu, the per-level calls
# and the loss weight 10 stay GHM-R's, so only the harmonizing differs from that row.
model.box_loss.bins = 1
model.box_loss.momentum = 0.0
