#!/usr/bin/env python
"""
Box AP of finished runs at each IoU threshold of COCO's AP (0.50, 0.55, ..., 0.95), as a
markdown table: where two detectors' AP differ, this says whether they differ in finding the
objects (low thresholds) or in placing the boxes (high ones).

    python tools/analysis/ap_per_iou.py RUN_DIR [RUN_DIR ...] \\
        [--gt datasets/shapes/annotations/shapes_val.json]

RUN_DIR: a finished run's output folder (``train.output_dir``), e.g. one of the folders
``make compare-rcnn`` writes under output/compare/.

Reads each run's ``inference/coco_instances_results.json`` (what train_net.py's COCOEvaluator
writes) and evaluates it against ``--gt`` with pycocotools: all areas, 100 detections per image,
AP at one threshold = the mean over the categories of the 101-point precision, as COCO does.
"""
import argparse
import contextlib
import io
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GT = os.path.join(REPO, "datasets", "shapes", "annotations", "shapes_val.json")


def ap_per_iou(gt, results_file):
    """(IoU thresholds, AP in % at each) of one results file against a loaded ``COCO``."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        evaluation = COCOeval(gt, gt.loadRes(results_file), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: [IoU threshold, recall point, category, area range, max detections];
    # area range 0 is "all", max-detections index 2 is 100; -1 marks categories without GT.
    precision = evaluation.eval["precision"][:, :, :, 0, 2]
    aps = []
    for per_threshold in precision:
        valid = per_threshold[per_threshold > -1]
        aps.append(100.0 * float(valid.mean()) if valid.size else float("nan"))
    return list(evaluation.params.iouThrs), aps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py")
    parser.add_argument("--gt", default=DEFAULT_GT, help="COCO-format ground-truth json")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.gt):
        raise FileNotFoundError(f"Ground truth {args.gt} not found (--gt)")
    results = [os.path.join(r, "inference", "coco_instances_results.json") for r in args.runs]
    for path in results:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {path}: has the run finished its evaluation?")

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(args.gt)
    header = None
    for run, path in zip(args.runs, results):
        thresholds, aps = ap_per_iou(gt, path)
        if header is None:
            header = [f"AP{round(100 * t)}" for t in thresholds]
            print("| run | " + " | ".join(header) + " | AP |")
            print("|---|" + "---:|" * (len(header) + 1))
        name = os.path.basename(os.path.normpath(run))
        cells = " | ".join(f"{ap:.1f}" for ap in aps)
        print(f"| {name} | {cells} | {np.nanmean(aps):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
