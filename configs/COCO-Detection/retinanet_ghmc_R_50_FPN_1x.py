# RetinaNet R-50 1x with GHM-C + smooth L1, as the official GHM config
# (libuyu/GHM_Detection experiments/cfg_retinanet_ghm-c-only_r50_fpn_1x.py, mmdetection).
from detectron2.config import LazyCall as L

from hpf.config import set_backbone
from hpf.losses import GHMCLoss

from ..common.schedules import multistep
from .retinanet_R_50_FPN_1x import dataloader, model, optimizer, train

set_backbone(model, "resnet50_pytorch_style", dataloader, train)  # torchvision R-50, RGB
# 30 bins, EMA 0.75; called once per FPN level sharing the EMA, as the official code.
model.cls_loss = L(GHMCLoss)(bins=30, momentum=0.75, per_level=True)
model.smooth_l1_beta = 0.11  # official SmoothL1Loss(beta=0.11) (the paper's delta = 1/9)
model.box2box_transform.weights = [1.0, 1.0, 1.0, 1.0]  # target_stds [1, 1, 1, 1]
model.prior_prob = 0.01  # no bias init in the config: RetinaHead's default 0.01
model.loss_normalizer = "mean"  # mmdetection divides the box loss by the batch's positives
train.clip_grad = dict(max_norm=35.0)  # optimizer_config grad_clip max_norm 35, L2
# 12 epochs [8, 11] ~ 90k [60k, 80k]; linear warm-up of 500 iterations from 1/3.
lr_multiplier = multistep(train.max_iter, [60000, 80000], warmup_factor=1.0 / 3)
