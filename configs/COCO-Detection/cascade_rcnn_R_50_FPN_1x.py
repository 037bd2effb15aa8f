# Cascade R-CNN R-50-FPN 1x, detection only, with biased sampling: the baseline of Sampling-Free
# (conference paper Table 7: 41.8 AP test-dev). The paper trained it in detectron2, so these are
# detectron2's settings (Base-RCNN-FPN + configs/common/models/cascade_rcnn.py): shorter side
# 640-800 in steps of 32, warm-up 1000 iterations from 0.001, 1000 proposals per image (the
# LazyConfig default and the paper's "~1k per image" for Sampling-Free's RoI heads; detectron2's
# YAML Misc/cascade_mask_rcnn_R_50_FPN_1x trains on 2000: post_nms_topk=[2000,1000]).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..common.models.cascade_rcnn import model
from ..common.schedules import multistep
from .faster_rcnn_R_50_FPN_1x import dataloader, optimizer, train

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333, sample_style="choice"
    ),
    L(T.RandomFlip)(horizontal=True),
]
# detectron2's solver: no bias lr factor, biases decayed like weights.
optimizer.params.bias_lr_factor = 1.0
optimizer.params.weight_decay_bias = None
lr_multiplier = multistep(90000, [60000, 80000], warmup_iters=1000, warmup_factor=0.001)
