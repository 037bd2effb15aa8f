"""COCO evaluation for minival and the test-dev results file the evaluation server takes."""
import logging
import os
import zipfile
from unittest import mock

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.evaluation import coco_evaluation
from detectron2.utils import comm
from pycocotools.cocoeval import COCOeval

from .fast_eval import COCOevalFaster

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)

COCO_EVAL_IMPLS = ("faster", "official")


def _faster_unless_keypoints(coco_gt, coco_dt, iou_type):
    """faster-coco-eval for boxes and masks; the official COCOeval for keypoints."""
    cocoeval = COCOeval if iou_type == "keypoints" else COCOevalFaster
    impl = "the official COCO API" if cocoeval is COCOeval else "faster-coco-eval"
    logger.info(f"Evaluating {iou_type} with {impl}")
    return cocoeval(coco_gt, coco_dt, iou_type)


class COCOEvaluator(_D2COCOEvaluator):
    """
    detectron2's ``COCOEvaluator``, evaluating with faster-coco-eval by default (detectron2's own
    fast evaluator needs the compiled ``detectron2._C``). On a split without annotations
    (test-dev), the detections are written as ``coco_instances_results.json`` and zipped as
    ``detections_{split}_{method}_results.zip``, the file the COCO evaluation server accepts.
    """

    def __init__(self, dataset_name, *args, coco_eval_impl="faster", method_name="hpf",
                 use_fast_impl=None, **kwargs):
        """
        Args:
            dataset_name, args, kwargs: as for detectron2's ``COCOEvaluator``.
            coco_eval_impl (str): "faster": :class:`hpf.evaluation.COCOevalFaster`, the C++
                evaluator of faster-coco-eval, which gives the same ``stats`` and ``precision``
                as the official one, float for float, several times faster; "official":
                pycocotools' ``COCOeval``, in Python. Keypoints are always evaluated with the
                official one, as are all tasks when ``max_dets_per_image`` is not 100 (then
                detectron2 uses its ``COCOevalMaxDets``, a subclass of the official one).
            method_name (str): the method's name in the test-dev zip's file name.
            use_fast_impl: not accepted (detectron2's fast evaluator is not built); choose with
                ``coco_eval_impl``.
        """
        if use_fast_impl is not None:
            raise ValueError("use_fast_impl: detectron2's fast COCO evaluator is not built here; "
                             "choose coco_eval_impl='faster' or 'official'")
        if coco_eval_impl not in COCO_EVAL_IMPLS:
            raise ValueError(f"coco_eval_impl must be one of {COCO_EVAL_IMPLS}, "
                             f"got {coco_eval_impl!r}")
        super().__init__(dataset_name, *args, use_fast_impl=False, **kwargs)
        self._dataset_name = dataset_name
        self._method_name = method_name
        self._coco_eval_impl = coco_eval_impl

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        if not self._do_evaluation and self._output_dir and comm.is_main_process():
            self.write_server_zip()
        return results

    def _eval_predictions(self, predictions, img_ids=None):
        """
        detectron2's, with faster-coco-eval in the place of its own fast evaluator: detectron2
        reads that class from a module global (``COCOeval_opt``, set when ``detectron2._C`` is
        built) when ``_use_fast_impl`` is on, so both are set for this call only.
        """
        if self._coco_eval_impl == "official":
            return super()._eval_predictions(predictions, img_ids)
        self._use_fast_impl = True
        try:
            with mock.patch.object(coco_evaluation, "COCOeval_opt", _faster_unless_keypoints):
                super()._eval_predictions(predictions, img_ids)
        finally:
            self._use_fast_impl = False

    def write_server_zip(self):
        json_file = os.path.join(self._output_dir, "coco_instances_results.json")
        split = "test-dev2017" if "test-dev" in self._dataset_name else self._dataset_name
        stem = f"detections_{split}_{self._method_name}_results"
        zip_path = os.path.join(self._output_dir, stem + ".zip")
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(json_file, arcname=stem + ".json")
        logger.info(
            f"{self._dataset_name} has no annotations: detections written to {json_file}; "
            f"upload {zip_path} to the COCO evaluation server."
        )
        return zip_path
