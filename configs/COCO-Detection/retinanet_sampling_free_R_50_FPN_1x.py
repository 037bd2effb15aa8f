# RetinaNet R-50 1x with Sampling-Free (conference paper Tables 3, 6, 7; journal Table IV), as the
# official maskrcnn-benchmark code behind those rows ran it: MSRA R-50 (the base's), smooth L1
# beta 0.11 on (10, 10, 5, 5)-weighted deltas, test NMS 0.4.
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale, SamplingFreeCELoss

from ..common.schedules import multistep
from .retinanet_R_50_FPN_1x import dataloader, model, optimizer, train

model.cls_loss = L(SamplingFreeCELoss)()
# The official code's weighting: r = L_reg / L_cls every iteration, times a learned delta^2,
# plus -log delta^2 (mode="plain" is Eq. 8 alone).
model.loss_balance = L(GuidedLossScale)(mode="learned_scale")
# The official fixed values; "auto" computes the paper's pi = N_f / (N C) (~1.25e-5 on COCO)
# and theta = N_f / N from the training data.
model.prior_prob = 1e-5
model.test_score_thresh = 1e-3
model.test_nms_thresh = 0.4  # maskrcnn-benchmark's RETINANET.NMS_TH, not overridden
model.box2box_transform.weights = [10.0, 10.0, 5.0, 5.0]
model.smooth_l1_beta = 0.11
# The official box loss is divided by N_pos * 4 (BBOX_REG_WEIGHT 4.0); ours by N_pos, so x 0.25.
model.box_loss_weight = 0.25
model.loss_normalizer = "mean"  # maskrcnn-benchmark divides by the batch's positives, no EMA
# maskrcnn-benchmark solver: bias lr x2 without weight decay; linear warm-up 500 it from 1/3.
optimizer.params.base_lr = "${..lr}"
optimizer.params.bias_lr_factor = 2.0
optimizer.params.weight_decay_bias = 0.0
lr_multiplier = multistep(train.max_iter, [60000, 80000], warmup_factor=1.0 / 3)
