# VarifocalNet R-50-FPN 1x with Varifocal Loss: the mmdetection VFNet that HPF builds on
# (zimoqingfeng/UMOP configs/vfnet/vfnet_r50_fpn_1x_coco.py). HPF paper Table 8 "VFNet".
from hpf.config import set_backbone

from ..common.data.coco import dataloader
from ..common.models.vfnet import model
from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from ..common.train import train

# torchvision R-50 weights (pytorch style): RGB input, BN statistics frozen with affine trained
# (mmdet norm_eval).
set_backbone(model, "resnet50_pytorch_style", dataloader, train)

# The reference's paramwise_cfg: bias lr x2 without weight decay. detectron2 applies it to every
# parameter named "bias"; mmcv exempts normalisation layers (their biases keep lr x1 and
# weight decay 1e-4).
optimizer.params.base_lr = "${..lr}"
optimizer.params.bias_lr_factor = 2.0
optimizer.params.weight_decay_bias = 0.0
# Linear warm-up of 500 iterations from 0.1 (the reference's warmup_ratio); 12 epochs.
lr_multiplier = multistep(90000, [60000, 80000], warmup_factor=0.1)
