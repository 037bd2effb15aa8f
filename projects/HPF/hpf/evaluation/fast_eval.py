"""faster-coco-eval's C++ COCOeval, made to give the official pycocotools numbers bit for bit."""
import numpy as np
from faster_coco_eval import COCOeval_faster

__all__ = ["COCOevalFaster"]

# pycocotools computes precision as tp / (tp + fp + np.spacing(1)): the eps only changes the
# result when tp + fp == 1, where a true positive gets 1 / (1 + eps) instead of 1.0.
_OFFICIAL_ONE = 1.0 / (1.0 + np.spacing(1))


class COCOevalFaster(COCOeval_faster):
    """
    ``faster_coco_eval.COCOeval_faster`` (per-image matching and accumulation in C++) with the
    official pycocotools ``COCOeval`` behaviour where the two differ:

    * ``precision`` is bit-identical to pycocotools. The C++ accumulation computes
      ``tp / (tp + fp)`` where pycocotools adds ``np.spacing(1)`` to the denominator; that
      matters only for a true positive that is the first counted detection of a
      precision-recall curve (1.0 against 0.9999999999999998), and only when the second counted
      detection is not a true positive (else the interpolated precision is 1.0 in both). The
      recall thresholds are extended with one probe between the first and second true positive
      of every curve, which tells which curves those are, and those entries are set to the
      pycocotools value. ``recall``, ``scores`` and ``stats`` then match as well.
    * The summary is printed to stdout, as pycocotools does (faster-coco-eval logs it), and is
      the 12 lines of ``stats`` (faster-coco-eval adds two).

    It takes pycocotools ``COCO`` objects (detectron2's ``COCOEvaluator._coco_api`` and its
    ``loadRes``) as well as faster-coco-eval's, for "bbox" and "segm"; keypoints are not
    supported (faster-coco-eval picks their categories differently from pycocotools).
    """

    def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", print_function=print, **kwargs):
        """
        Args:
            cocoGt, cocoDt: the ground truth and the detections (``cocoGt.loadRes(...)``).
            iouType (str): "bbox" or "segm".
            print_function (callable): where the progress and summary lines go.
            kwargs: other arguments of ``faster_coco_eval.COCOeval_faster``, but not
                ``lvis_style`` or ``separate_eval`` (the correction assumes COCO's rules and
                one C++ pass).
        """
        if iouType not in ("bbox", "segm"):
            raise ValueError(f"COCOevalFaster evaluates 'bbox' or 'segm', got {iouType!r}")
        for unsupported in ("lvis_style", "separate_eval"):
            if kwargs.get(unsupported):
                raise ValueError(f"COCOevalFaster does not support {unsupported}=True")
        super().__init__(cocoGt, cocoDt, iouType, print_function=print_function, **kwargs)

    def _num_positives(self):
        """
        The number of ground truths that count for recall (not crowd, area within the range), as
        a (categories, area ranges) array in the order of ``precision``.
        """
        p = self.params
        img_ids = list(np.unique(p.imgIds))
        cat_ids = list(np.unique(p.catIds)) if p.useCats else [-1]
        index = {c: k for k, c in enumerate(cat_ids)}
        ranges = np.asarray(p.areaRng, dtype=np.float64)
        counts = np.zeros((len(cat_ids), len(ranges)), dtype=np.int64)
        anns = self.cocoGt.loadAnns(
            self.cocoGt.getAnnIds(imgIds=img_ids, catIds=list(p.catIds) if p.catIds else [])
        )
        for ann in anns:
            if ann.get("iscrowd", 0):
                continue
            area = ann["area"]
            k = index[ann["category_id"]] if p.useCats else 0
            counts[k] += (ranges[:, 0] <= area) & (area <= ranges[:, 1])
        return counts

    def evaluate(self):
        """
        Matches and accumulates (one C++ pass; :meth:`accumulate` then has nothing left to
        do), filling ``self.eval`` with pycocotools' arrays.
        """
        num_pos = self._num_positives()
        rec_thrs = np.asarray(self.params.recThrs)
        # 1.5 / n lies strictly between the recall of the first (1 / n) and of the second (2 / n)
        # true positive of a curve with n counted ground truths.
        probes = 1.5 / num_pos[num_pos > 0]
        extended = np.union1d(rec_thrs, probes)
        self.params.recThrs = extended
        try:
            super().evaluate()
        finally:
            self.params.recThrs = rec_thrs
        self._paramsEval.recThrs = rec_thrs

        precision = self.eval["precision"]  # (iou, recall thresholds, category, area, max dets)
        official = np.searchsorted(extended, rec_thrs)
        fixed = precision[:, official].copy()
        for k, a in zip(*np.nonzero(num_pos)):
            n = num_pos[k, a]
            second_is_tp = precision[:, np.searchsorted(extended, 1.5 / n), k, a, :] == 1.0
            # the recall thresholds that the first true positive (recall 1 / n) reaches
            at_first = rec_thrs <= 1.0 / n
            curve = fixed[:, :, k, a, :]
            curve[(curve == 1.0) & at_first[None, :, None] & ~second_is_tp[:, None, :]] = (
                _OFFICIAL_ONE
            )
        self.eval["precision"] = fixed
        self.eval["scores"] = self.eval["scores"][:, official]
        self.eval["counts"] = list(fixed.shape)

    def summarize(self):
        # faster-coco-eval also prints AR at IoU 0.5 and 0.75 after the 12 lines of ``stats``
        # (``all_stats`` keeps them); print those 12 only, as pycocotools does.
        lines, print_function = [], self.print_function
        self.print_function = lines.append
        try:
            super().summarize()
        finally:
            self.print_function = print_function
        for line in lines[: len(self.stats)]:
            print_function(line)
