import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .shapes import dataloader

# NEON aerial tree crowns (hpf/data/neon_trees.py), generated on first use under
# $DETECTRON2_DATASETS/neon_trees: 400 px training tiles, validation tiles of at most 400 px
# from other images; used at their own size (10 cm per pixel), as the shapes images are.
dataloader.train.dataset.names = "neon_trees_train"
dataloader.test.dataset.names = "neon_trees_val"
# Nadir views have no "up": both flips are label-preserving.
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.RandomFlip)(horizontal=False, vertical=True),
]
dataloader.train.total_batch_size = 4
