# Faster R-CNN R-50-FPN 1x with mini-batch biased sampling: the baseline of Sampling-Free
# (conference paper Table 4: 36.8 AP minival). The paper trained it in maskrcnn-benchmark with
# its standard solver and box losses, which these settings follow: SGD lr 0.02 (batch 16), bias
# lr x2 without weight decay, linear warm-up 500 iterations from 1/3, 90k iterations, decays at
# 60k / 80k, single-scale 800 training; smooth L1 with beta 1/9 (RPN) and 1 (RoI heads). The
# Sampling-Free configs built on it then differ in sampling alone.
from hpf.config import use_smooth_l1_box_losses

from ..common.data.coco import dataloader
from ..common.models.faster_rcnn import model
from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from ..common.train import train

optimizer.lr = 0.02
optimizer.params.base_lr = "${..lr}"
optimizer.params.bias_lr_factor = 2.0
optimizer.params.weight_decay_bias = 0.0
lr_multiplier = multistep(90000, [60000, 80000], warmup_factor=1.0 / 3)
use_smooth_l1_box_losses(model)

train.max_iter = 90000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
