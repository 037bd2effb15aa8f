# FCOS R-50 1x with Sampling-Free: CE on every location, guided loss scaling against the GIoU loss
# (every iteration, Eq. 8), optimal bias and adaptive threshold from the training data.
# The official config fixes PRIOR_PROB 1e-4 and INFERENCE_TH 1e-3 (on sigmoid(cls)); here the
# threshold applies to sqrt(cls * ctr) as detectron2's FCOS does. Deviation: the official FCOS is
# maskrcnn-benchmark's vanilla FCOS (no center sampling, IoU loss, centerness on the cls tower,
# constant warm-up); this is detectron2's, as the focal baseline: only the loss differs.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from .fcos_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
model.loss_balance = L(GuidedLossScale)(factor=1.0, freeze_after=None)
model.prior_prob = "auto"
model.test_score_thresh = "auto"
