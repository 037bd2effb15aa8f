from .build import build_evaluator
from .coco import COCOEvaluator

__all__ = ["COCOEvaluator", "build_evaluator"]
