# ATSS R-50-FPN 1x with focal loss: the mmdetection ATSS that HPF builds on
# (zimoqingfeng/UMOP). HPF paper Table 1/4 "ATSS w/FL".
from hpf.config import set_backbone

from ..common.data.coco import dataloader
from ..common.models.atss import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

# torchvision R-50 weights (pytorch style): RGB input for the base's RGB pixel stats (the
# mappers' image_format too), BN statistics frozen with affine trained (mmdet norm_eval).
set_backbone(model, "resnet50_pytorch_style", dataloader, train)
