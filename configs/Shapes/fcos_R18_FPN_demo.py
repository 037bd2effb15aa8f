# The `make demo` model: FCOS with a ResNet-18 FPN trained from scratch on the embedded
# shapes dataset, on CPU, in a few minutes.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from hpf.modeling import basic_resnet_stages

from ..common.data.shapes import dataloader
from ..common.models.fcos import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import multistep
from ..common.train import train

# ResNet-18 at half width (BasicBlocks, BatchNorm), from scratch (no pretrained weights exist
# here, so nothing is frozen): about 3x cheaper than ResNet-18 on 2 CPU cores.
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stem.out_channels = 32
model.backbone.bottom_up.stages = L(basic_resnet_stages)(
    widths=(32, 64, 128, 256), num_blocks=(2, 2, 2, 2), in_channels=32, norm="BN"
)
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 64
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.num_classes = 4
model.pixel_std = [57.375, 57.120, 58.395]  # BGR; from scratch, so normalise by the std too
# Objects of 12-200 px in 256-320 px images: detectron2's ranges (0, 64) ... (512, inf) leave
# P6-P7 without positives; these put some on every level.
model.regress_ranges = [(0, 16), (16, 32), (32, 64), (64, 128), (128, float("inf"))]
# An early model's scores are low: the stock 0.2 would hide most of its detections.
model.test_score_thresh = 0.05

optimizer.lr = 1e-3

train.max_iter = 400
train.device = "cpu"
train.seed = 0
train.eval_period = 0  # evaluated once at the end
train.log_period = 20
train.checkpointer.period = 100
train.output_dir = "output/demo"

lr_multiplier = multistep(train.max_iter, [int(0.8 * train.max_iter), int(0.93 * train.max_iter)],
                          warmup_iters=50)
