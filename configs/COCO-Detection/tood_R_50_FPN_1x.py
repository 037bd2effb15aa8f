# TOOD R-50-FPN 1x (mmdetection's tood_r50_fpn_1x_coco): focal loss with ATSS assignment for
# the first 4 epochs, then Task Alignment Learning with QFL (beta 2) on the alignment targets.
from hpf.config import set_backbone

from ..common.data.coco import dataloader
from ..common.models.tood import model
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

# torchvision R-50 weights (pytorch style): RGB input for the base's RGB pixel stats (the
# mappers' image_format too), BN statistics frozen with affine trained (mmdet norm_eval).
set_backbone(model, "resnet50_pytorch_style", dataloader, train)
