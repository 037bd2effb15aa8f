# FCOS with a half-width ResNet-18 FPN trained from scratch on the embedded shapes dataset, on
# 2 CPU cores (the first `make demo` model: AP 35.1 / AP50 49.2 in 600 iterations, 8.6 min;
# the test suite trains it for a few iterations).
from hpf.config import use_small_resnet_fpn

from ..common.data.shapes import dataloader
from ..common.models.fcos import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import cpu_schedule
from ..common.train_cpu import train

use_small_resnet_fpn(model)  # ResNet-18 shape at half width, from scratch; 64-channel FPN
model.num_classes = 4
# Objects of 12-200 px in 256-320 px images: detectron2's ranges (0, 64) ... (512, inf) leave
# P6-P7 without positives (measured: 0 of 11.3k positives over 300 training images); these
# put some on every level (P3-P7: 45 / 32 / 17 / 4 / 2 %).
model.regress_ranges = [(0, 32), (32, 64), (64, 96), (96, 128), (128, float("inf"))]
# An early model's scores are low: the stock 0.2 would hide most of its detections.
model.test_score_thresh = 0.05

optimizer.lr = 2e-3

train.max_iter = 600
train.output_dir = "output/shapes_fcos"

lr_multiplier = cpu_schedule(train.max_iter)
