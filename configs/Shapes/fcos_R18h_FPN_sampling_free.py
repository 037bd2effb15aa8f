# FCOS with Sampling-Free on the embedded shapes dataset: CE on every location, the official
# weighting of the FCOS row (r = L_reg / L_cls every iteration times a learned delta^2, plus
# -log delta^2), optimal bias and adaptive threshold from the training data.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .fcos_R18h_FPN import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(mode="learned_scale")
model.prior_prob = "auto"
model.test_score_thresh = "auto"
train.foreground_stats_images = 200
train.output_dir = "output/shapes_fcos_sampling_free"
