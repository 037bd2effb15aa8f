# GFL (QFL + DFL) on the embedded shapes dataset: a ResNet-18-shaped backbone at half width,
# from scratch, on CPU. The baseline of `make compare DETECTOR=gfl`.
from hpf.config import use_small_resnet_fpn

from ..common.data.shapes import dataloader
from ..common.models.gfl import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import cpu_schedule
from ..common.train_cpu import train

use_small_resnet_fpn(model)
model.num_classes = 4
# Anchors of 2 x stride, as the shapes ATSS configs: the stock 64-1024 px anchors give P6-P7
# no positives with 12-200 px objects in 256-320 px images.
model.anchor_generator.sizes = [[16], [32], [64], [128], [256]]

optimizer.lr = 2e-3

train.max_iter = 700
train.output_dir = "output/shapes_gfl_qfl"

lr_multiplier = cpu_schedule(train.max_iter)
