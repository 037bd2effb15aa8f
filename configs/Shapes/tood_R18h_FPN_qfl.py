# TOOD (focal loss with ATSS assignment, then QFL with task-aligned assignment) on the embedded
# shapes dataset: a ResNet-18-shaped backbone at half width, from scratch, on CPU. The baseline
# of `make compare DETECTOR=tood`.
from hpf.config import use_small_resnet_fpn

from ..common.data.shapes import dataloader
from ..common.models.tood import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import cpu_schedule
from ..common.train_cpu import train

use_small_resnet_fpn(model)
model.num_classes = 4
# Anchors of 2 x stride, as the ATSS shapes config (the stock 64-1024 px anchors give P6-P7
# no positives on 12-200 px objects).
model.anchor_generator.sizes = [[16], [32], [64], [128], [256]]

optimizer.lr = 2e-3

train.max_iter = 700
# The reference's 4 of 12 epochs in the ATSS phase.
model.initial_iters = train.max_iter * 4 // 12
train.output_dir = "output/shapes_tood_qfl"

lr_multiplier = cpu_schedule(train.max_iter)
