# FCOS R-50 1x with Sampling-Free (journal Table IV): CE on every location, scaled by
# r = L_reg / L_cls every iteration times a learned delta^2 (plus -log delta^2), as the official
# code behind the row; its fixed prior 1e-4 and test threshold 1e-3 ("auto": the paper's
# pi = N_f / (N C) and theta = N_f / N). Here the threshold applies to sqrt(cls * ctr), as
# detectron2's FCOS thresholds (the official one thresholds sigmoid(cls)). Deviation: the
# official FCOS is maskrcnn-benchmark's vanilla FCOS (no center sampling, IoU loss, centerness
# on the cls tower, constant warm-up); this is detectron2's, as the focal baseline.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .fcos_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(mode="learned_scale")
model.prior_prob = 1e-4
model.test_score_thresh = 1e-3
