"""COCO evaluation for minival and the test-dev results file the evaluation server takes."""
import logging
import os
import zipfile

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.utils import comm

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)


class COCOEvaluator(_D2COCOEvaluator):
    """
    detectron2's ``COCOEvaluator`` with the official COCOeval by default (its fast evaluator
    needs the compiled ``detectron2._C``). On a split without annotations (test-dev), the
    detections are written as ``coco_instances_results.json`` and zipped as
    ``detections_{split}_{method}_results.zip``, the file the COCO evaluation server accepts.
    """

    def __init__(self, dataset_name, *args, use_fast_impl=False, method_name="hpf", **kwargs):
        super().__init__(dataset_name, *args, use_fast_impl=use_fast_impl, **kwargs)
        self._dataset_name = dataset_name
        self._method_name = method_name

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        if not self._do_evaluation and self._output_dir and comm.is_main_process():
            self.write_server_zip()
        return results

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
