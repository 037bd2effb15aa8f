# ATSS R-50 1x with Sampling-Free as the official ATSS (its only form): CE on every anchor; for
# the first 100 iterations r = mean(box, centerness losses) / L_cls, then frozen at its
# process-averaged value of iteration 100; every loss divided by 2 sigma_i^2 with learned
# sigma_i, plus sum log sigma_i; fixed prior 3e-3 and test threshold 1e-3 ("auto": the paper's
# pi = N_f / (N C) and theta = N_f / N). Schedule and warm-up kept from the ATSS baseline
# (official: constant warm-up x1/3) so that only the loss differs.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(mode="guided_loss", num_losses=3, freeze_after=100)
model.prior_prob = 3e-3
model.test_score_thresh = 1e-3
