from .build import build_evaluator
from .coco import COCOEvaluator
from .fast_eval import COCOevalFaster

__all__ = ["COCOEvaluator", "COCOevalFaster", "build_evaluator"]
