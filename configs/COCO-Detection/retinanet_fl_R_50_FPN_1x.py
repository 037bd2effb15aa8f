# RetinaNet-FL, the focal-loss baseline of the Sampling-Free papers (conference Tables 1-3, 7;
# journal Table IV): the Sampling-Free config's maskrcnn-benchmark settings with focal loss,
# prior 0.01 and test threshold 0.05, so that only the classification ingredients differ.
from detectron2.config import LazyCall as L

from hpf.losses import FocalLoss

from .retinanet_sampling_free_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(FocalLoss)(alpha=0.25, gamma=2.0)
model.loss_balance = None
model.prior_prob = 0.01
model.test_score_thresh = 0.05
