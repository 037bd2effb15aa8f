# ATSS-HPF R-101-DCN (c3-c5), 18 epochs, multi-scale training: HPF Table 9 row "ATSS w/HPF
# R-101-DCN 800 18 MS". Shorter side sampled from [640, 800] (Table 9 caption), long side <= 1333;
# tested at 800. UMOP has no config for it.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .atss_hpf_R_101_DCN_FPN_1_5x import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(640, 800), sample_style="range", max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
