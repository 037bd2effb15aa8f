from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader

from hpf.data.build import get_detection_dataset_dicts
from hpf.data.mapper import DatasetMapper
from hpf.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

# The papers train at a single scale, shorter side 800 (detectron2's zoo: 640-800).
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,
    ),
    total_batch_size=16,
    num_workers=4,
)

# coco_2017_val is minival (5k images). For test-dev set
#   dataloader.test.dataset.names=coco_2017_test-dev
# and the evaluator writes the results json and the zip for the evaluation server.
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference",
    coco_eval_impl="faster",  # or "official": pycocotools' COCOeval, same numbers, slower
)
