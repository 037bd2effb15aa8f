# The `make demo` model: ATSS with HPF (hierarchical progressive focus) on the embedded shapes
# dataset, on 2 CPU cores within the 10-minute budget. The `make compare` HPF config
# (atss_R18h_FPN_hpf.py) with images at about 3/4 of their size (shorter side 224 instead of
# 256-320; a step takes about 0.5 s instead of 0.8-0.9 s), so that 900 iterations fit.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..common.schedules import cpu_schedule
from .atss_R18h_FPN_hpf import dataloader, model, optimizer, train

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=224, max_size=320),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=224, max_size=320)]

train.max_iter = 900
train.output_dir = "output/demo"
lr_multiplier = cpu_schedule(train.max_iter)
