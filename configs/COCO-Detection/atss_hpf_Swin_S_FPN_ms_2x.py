# ATSS-HPF Swin-S (ImageNet-1k), 2x, multi-scale [480, 960]: HPF Table 9 "Swin-S-1K 960 24 MS"
# (UMOP umop_swin-S_fpn_2x_coco_mstrain.py). Tested at 800 as the official config.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from hpf.config import set_backbone

from ..common.optim import AdamW as optimizer
from ..common.schedules import lr_multiplier_2x as lr_multiplier
from .atss_hpf_R_50_FPN_1_5x import dataloader, model, train

set_backbone(model, "swin_s", dataloader, train)
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(480, 960), sample_style="range", max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
train.max_iter = lr_multiplier.scheduler.num_updates

# AdamW lr 1e-4, wd 0.05, no decay on norms, absolute_pos_embed, relative_position_bias_table
# (as detectron2's ViTDet Swin configs). Deviation: weight_decay_norm also exempts the head's GN,
# which mmdet's 'norm' name key missed ('gn'), so UMOP decayed it.
optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
optimizer.params.weight_decay_norm = 0.0
optimizer.params.overrides = {
    "absolute_pos_embed": {"weight_decay": 0.0},
    "relative_position_bias_table": {"weight_decay": 0.0},
}
train.amp.enabled = True  # the official Swin configs train in fp16 (apex)
