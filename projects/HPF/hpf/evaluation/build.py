"""The evaluator of a test dataset, chosen from how the dataset was registered."""
from detectron2.evaluation import PascalVOCDetectionEvaluator

from hpf.data.voc import is_voc_dataset

from .coco import COCOEvaluator

__all__ = ["build_evaluator"]


def build_evaluator(dataset_name, output_dir=None, **coco_kwargs):
    """
    detectron2's ``PascalVOCDetectionEvaluator`` for a dataset registered in the PASCAL VOC
    format (detectron2's builtin ``voc_*`` names, or any ``register_pascal_voc`` dataset); for
    a 2007 split it uses the VOC2007 11-point AP, and its ``bbox/AP50`` is the mAP the VOC
    papers report. Any other dataset gets :class:`hpf.evaluation.COCOEvaluator`, with
    ``output_dir`` and ``coco_kwargs`` (e.g. ``coco_eval_impl="official"``).
    """
    if not isinstance(dataset_name, str):
        names = list(dataset_name)
        if len(names) != 1:
            raise ValueError(f"evaluate one test dataset at a time, got {names}")
        dataset_name = names[0]
    if is_voc_dataset(dataset_name):
        return PascalVOCDetectionEvaluator(dataset_name)
    return COCOEvaluator(dataset_name, output_dir=output_dir, **coco_kwargs)
