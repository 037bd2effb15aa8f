# RetinaNet R-50-FPN with focal loss on the NEON tree crowns, fine-tuned on CPU from Keras'
# ImageNet ResNet-50 (`make weights`). The baseline of `make compare-trees`.
from hpf.config import use_imagenet_r50

from ..common.data.neon_trees import dataloader
from ..common.models.retinanet import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import cpu_schedule
from ..common.train_cpu import train

use_imagenet_r50(model, dataloader=dataloader, train=train)
model.num_classes = 1
# Crowns are 11-90 px (median 40): anchors of 2 x stride (base 16-256 px instead of 32-512)
# put them on P3-P5 instead of P3 alone.
model.anchor_generator.sizes = [
    [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]
]
# The CPU budget (about 1.4 s a step on 2 cores): stem and res2-res4 frozen (ImageNet
# features kept), 2 convs per head tower instead of 4, 2 tiles a step.
model.backbone.bottom_up.freeze_at = 4
model.head.conv_dims = [256, 256]
dataloader.train.total_batch_size = 2

optimizer.lr = 2e-4

train.max_iter = 200
train.clip_grad = dict(max_norm=35.0)  # mmdetection's, against early spikes of a fresh head
train.checkpointer.period = 100
train.output_dir = "output/neon_trees_retinanet_focal"

lr_multiplier = cpu_schedule(train.max_iter)
