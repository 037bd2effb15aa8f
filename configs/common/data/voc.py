from detectron2.config import LazyCall as L
from detectron2.data.datasets.pascal_voc import CLASS_NAMES

from hpf.evaluation import build_evaluator

from .coco import dataloader

# PASCAL VOC 07+12 in detectron2's builtin registrations (layout: datasets/README.md): train on
# VOC2007 + VOC2012 trainval (16,551 images), test on VOC2007 test (4,952 images). The official
# VOC configs are not published; the COCO input sizes of coco.py are kept (maskrcnn-benchmark's
# defaults: single-scale 800, at most 1333, for training and test).
num_classes = len(CLASS_NAMES)  # 20

dataloader.train.dataset.names = ("voc_2007_trainval", "voc_2012_trainval")
dataloader.test.dataset.names = "voc_2007_test"
# A VOC-format dataset gets detectron2's PascalVOCDetectionEvaluator: VOC2007 11-point AP, whose
# "bbox/AP50" is the mAP of the papers (its "AP" averages IoU 0.5:0.95, no paper's number).
dataloader.evaluator = L(build_evaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference",
)
