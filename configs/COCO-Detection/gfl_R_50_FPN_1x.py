# GFL R-50-FPN 1x (QFL + DFL): the mmdetection GFL that HPF builds on (zimoqingfeng/UMOP).
# HPF paper Table 8 "GFL".
from hpf.config import set_backbone

from ..common.data.coco import dataloader
from ..common.models.gfl import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

# torchvision R-50 weights (pytorch style): RGB input for the base's RGB pixel stats (the
# mappers' image_format too), BN statistics frozen with affine trained (mmdet norm_eval).
set_backbone(model, "resnet50_pytorch_style", dataloader, train)
