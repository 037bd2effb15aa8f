# RetinaNet with Sampling-Free on the NEON tree crowns: cross-entropy on every anchor, the
# official one-stage weighting (r = L_box / L_cls times a learned delta^2), the optimal prior
# pi = N_f / (N C) and the threshold theta = N_f / N counted on the training tiles. The box loss,
# normaliser, schedule and test NMS are those of retinanet_R_50_FPN_focal.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .retinanet_R_50_FPN_focal import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(mode="learned_scale")
model.prior_prob = "auto"
model.test_score_thresh = "auto"
train.foreground_stats_images = 65  # every training tile
train.output_dir = "output/neon_trees_retinanet_sampling_free"
