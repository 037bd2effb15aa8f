# RetinaNet-CE of the Sampling-Free conference paper (Table 1, Table 2(b), Fig. 2): sigmoid CE on
# every anchor with a constant classification weight w and the prior pi, no guided scaling,
# the Sampling-Free config's settings otherwise. The best cell: pi = 1e-5, w = 0.1 (35.6 AP).
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale

from .retinanet_sampling_free_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.loss_balance = L(GuidedLossScale)(mode="constant", factor=0.1)  # L_cls <- w L_cls
model.prior_prob = 1e-5
model.test_score_thresh = 0.05
