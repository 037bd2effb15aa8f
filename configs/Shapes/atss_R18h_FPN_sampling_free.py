# ATSS with Sampling-Free: plain sigmoid CE on every anchor, guided loss scaling against the box
# loss, optimal bias from the training data, adaptive test threshold.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .atss_R18h_FPN_focal import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(factor=1.0)
model.prior_prob = "auto"
model.test_score_thresh = "auto"
train.foreground_stats_images = 200
train.output_dir = "output/shapes_atss_sampling_free"
