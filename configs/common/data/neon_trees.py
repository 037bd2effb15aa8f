from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader

import hpf.data  # noqa: F401  registers neon_trees_train / neon_trees_val
from hpf.data.build import get_detection_dataset_dicts
from hpf.data.mapper import DatasetMapper
from hpf.evaluation import COCOEvaluator

# NEON aerial tree crowns (hpf/data/neon_trees.py), generated on first use under
# $DETECTRON2_DATASETS/neon_trees: 400 px training tiles, validation tiles of at most 400 px
# from other images; used at their own size (10 cm per pixel). Nadir views have no "up":
# both flips are label-preserving.
dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="neon_trees_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.RandomFlip)(horizontal=False, vertical=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="neon_trees_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference",
)
