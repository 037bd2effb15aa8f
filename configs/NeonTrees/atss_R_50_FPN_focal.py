# ATSS R-50-FPN with focal loss on the NEON tree crowns, fine-tuned on CPU from Keras' ImageNet
# ResNet-50 (`make weights`): the settings of retinanet_R_50_FPN_focal (budget, optimizer,
# schedule) on the ATSS of configs/common/models/atss.py.
from hpf.config import use_imagenet_r50

from ..common.models.atss import model
from .retinanet_R_50_FPN_focal import dataloader, lr_multiplier, optimizer, train

use_imagenet_r50(model, dataloader=dataloader, train=train)
model.num_classes = 1
# Anchors of 2 x stride (octave base scale 2 instead of 8) for 11-90 px crowns.
model.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.backbone.bottom_up.freeze_at = 4
model.head.conv_dims = [256, 256]

train.output_dir = "output/neon_trees_atss_focal"
