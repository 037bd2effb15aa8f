from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader

import hpf.data  # noqa: F401  registers shapes_train / shapes_val
from hpf.data.build import get_detection_dataset_dicts
from hpf.data.mapper import DatasetMapper
from hpf.evaluation import COCOEvaluator

# The embedded synthetic dataset (hpf/data/shapes.py), generated on first use under
# $DETECTRON2_DATASETS/shapes. Images are 256-320 px: used at their own size.
dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[L(T.RandomFlip)(horizontal=True)],
        image_format="BGR",
    ),
    total_batch_size=8,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference",
    coco_eval_impl="faster",  # or "official": pycocotools' COCOeval, same numbers, slower
)
