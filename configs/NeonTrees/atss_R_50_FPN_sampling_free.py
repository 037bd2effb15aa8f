# ATSS with Sampling-Free on the NEON tree crowns, in the official ATSS form: cross-entropy on
# every anchor, r = mean(box, centerness losses) / L_cls frozen after 100 iterations, learned
# uncertainty weights; prior pi = N_f / (N C) and threshold theta = N_f / N counted on the
# training tiles. Everything else as atss_R_50_FPN_focal.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .atss_R_50_FPN_focal import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(mode="guided_loss", num_losses=3, freeze_after=100)
model.prior_prob = "auto"
model.test_score_thresh = "auto"
train.foreground_stats_images = 65  # every training tile
train.output_dir = "output/neon_trees_atss_sampling_free"
