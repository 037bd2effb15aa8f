#!/usr/bin/env python
"""COCO box evaluation time: the official pycocotools COCOeval against faster-coco-eval.

A synthetic set the size of COCO minival (5,000 images of 320-640 px, about 36k ground truths:
7.3 per image, 80 classes with a skewed frequency, 1% crowd, sides log-uniform in 4-500 px, so
about 40 / 25 / 35 % small / medium / large), and --dets-per-image detections per image (the
top-100 of a detector: a jittered box on most objects, with its class most of the time, and
low-scored random boxes for the rest). Both evaluators run through the code path of
hpf.evaluation.COCOEvaluator (detectron2's _evaluate_predictions_on_coco: loadRes, evaluate,
accumulate, summarize), in the same run, alternating, --repeats times each. Prints a markdown
table of seconds per stage (medians), their sum, the time with loadRes (the same pycocotools
call for both), the ratio official / faster of the sums, and whether the two give the same
stats, precision, recall and scores arrays, float for float.

    python benchmarks/benchmark_coco_eval.py [--images 5000] [--dets-per-image 100] [--repeats 1]
"""

import argparse
import contextlib
import gc
import io
import itertools
import statistics
import time

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hpf.evaluation import COCOevalFaster

STAGES = ("evaluate", "accumulate", "summarize")


def synthetic_coco(num_images, dets_per_image, seed=0):
    """
    Returns ``(dataset, results)``: a COCO ground-truth dict and a list of COCO box results
    (dataset category ids), as described in the module docstring.
    """
    rng = np.random.default_rng(seed)
    cats = [c for c in COCO_CATEGORIES if c["isthing"]]
    cat_ids = np.array([c["id"] for c in cats])
    freq = 1.0 / np.arange(1, len(cats) + 1)
    freq /= freq.sum()
    images, anns, results = [], [], []

    def random_boxes(n, width, height):
        side = np.exp(rng.uniform(np.log(4), np.log(500), n))
        aspect = np.exp(rng.normal(0, 0.5, n))
        w = np.minimum(side * np.sqrt(aspect), width - 1)
        h = np.minimum(side / np.sqrt(aspect), height - 1)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        return np.stack([x, y, w, h], axis=1)

    for image_id in range(1, num_images + 1):
        width, height = (int(v) for v in rng.integers(320, 641, 2))
        images.append({"id": image_id, "width": width, "height": height,
                       "file_name": f"{image_id:012d}.jpg"})
        num_gt = 0 if rng.random() < 0.01 else int(rng.geometric(1 / 7.3))
        boxes = random_boxes(num_gt, width, height)
        classes = rng.choice(cat_ids, num_gt, p=freq)
        crowd = rng.random(num_gt) < 0.01
        for box, c, iscrowd in zip(boxes, classes, crowd):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(c),
                         "bbox": box.tolist(), "area": float(box[2] * box[3]),
                         "iscrowd": int(iscrowd)})
        # detections: most objects found (IoU spread by the jitter), a few duplicates
        found = rng.random(num_gt) < 0.9
        dup = found & (rng.random(num_gt) < 0.1)
        near = np.concatenate([boxes[found], boxes[dup]])
        near_cls = np.concatenate([classes[found], classes[dup]])
        wrong = rng.random(len(near)) < 0.1
        near_cls[wrong] = rng.choice(cat_ids, int(wrong.sum()))
        jitter = rng.normal(0, 0.12, (len(near), 4)) * near[:, [2, 3, 2, 3]]
        near = near + jitter
        near[:, 2:] = np.maximum(near[:, 2:], 1.0)
        near_scores = rng.beta(5, 2, len(near))
        num_random = max(dets_per_image - len(near), 0)
        det_boxes = np.concatenate([near, random_boxes(num_random, width, height)])
        det_cls = np.concatenate([near_cls, rng.choice(cat_ids, num_random, p=freq)])
        det_scores = np.concatenate([near_scores, rng.beta(1, 6, num_random)])
        keep = np.argsort(-det_scores, kind="stable")[:dets_per_image]
        for k in keep:
            results.append({"image_id": image_id, "category_id": int(det_cls[k]),
                            "bbox": det_boxes[k].tolist(), "score": float(det_scores[k])})
    dataset = {"images": images, "annotations": anns, "info": {}, "licenses": [],
               "categories": [{"id": c["id"], "name": c["name"]} for c in cats]}
    return dataset, results


def timed(cocoeval_cls, seconds):
    """A subclass of ``cocoeval_cls`` adding the time of each of STAGES to ``seconds``."""

    class Timed(cocoeval_cls):
        pass

    def wrap(stage):
        def method(self):
            start = time.perf_counter()
            getattr(cocoeval_cls, stage)(self)
            seconds[stage] += time.perf_counter() - start

        return method

    for stage in STAGES:
        setattr(Timed, stage, wrap(stage))
    return Timed


def run(coco_gt, results, cocoeval_cls):
    """
    Evaluates ``results`` as COCOEvaluator does; returns the arrays the evaluation gives
    (``stats``, ``precision``, ``recall``, ``scores``) and the seconds of each stage.
    """
    seconds = dict.fromkeys(STAGES, 0.0)
    results = [dict(r) for r in results]  # loadRes adds fields to the dicts
    gc.collect()  # what the previous run left does not get collected in this one's time
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = _evaluate_predictions_on_coco(
            coco_gt, results, "bbox", cocoeval_fn=timed(cocoeval_cls, seconds)
        )
    seconds["total"] = time.perf_counter() - start  # with loadRes
    arrays = {"stats": np.asarray(coco_eval.stats)}
    arrays.update({k: coco_eval.eval[k] for k in ("precision", "recall", "scores")})
    return arrays, seconds


def same_arrays(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    dataset, results = synthetic_coco(args.images, args.dets_per_image, args.seed)
    coco_gt = COCO()
    coco_gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    anns = dataset["annotations"]
    print(f"{args.images} images, {len(anns)} ground truths "
          f"({sum(a['iscrowd'] for a in anns)} crowd), {len(results)} detections, "
          f"{len(dataset['categories'])} classes\n")

    impls = {"official (pycocotools)": COCOeval, "faster-coco-eval": COCOevalFaster}
    times = {name: [] for name in impls}
    evals = {}
    for r in range(args.repeats):
        for name in (impls if r % 2 == 0 else reversed(list(impls))):
            evals[name], seconds = run(coco_gt, results, impls[name])
            times[name].append(seconds)

    def median(name, key):
        return statistics.median(t[key] for t in times[name])

    official_name = "official (pycocotools)"
    for t in itertools.chain(*times.values()):
        t["sum"] = sum(t[s] for s in STAGES)
    print("| evaluator | evaluate (s) | accumulate (s) | summarize (s) | sum (s) "
          "| with loadRes (s) | official / this (sum) |")
    print("|---|---|---|---|---|---|---|")
    for name in impls:
        cells = [f"{median(name, key):.2f}" for key in (*STAGES, "sum", "total")]
        ratio = median(official_name, "sum") / median(name, "sum")
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    print("\n(faster-coco-eval accumulates in its evaluate(), in the same C++ call.)")
    ratio = median(official_name, "sum") / median("faster-coco-eval", "sum")
    ratio_total = median(official_name, "total") / median("faster-coco-eval", "total")
    print(f"official / faster = {ratio:.2f}x (evaluate+accumulate+summarize), "
          f"{ratio_total:.2f}x with loadRes (medians of {args.repeats})")
    official, faster = evals[official_name], evals["faster-coco-eval"]
    print(f"stats equal: {same_arrays(official['stats'], faster['stats'])}")
    equal = all(same_arrays(official[k], faster[k]) for k in ("precision", "recall", "scores"))
    print(f"precision, recall, scores equal: {equal}")
    print("AP, AP50, AP75, APs, APm, APl: "
          + ", ".join(f"{100 * s:.3f}" for s in faster["stats"][:6]))


if __name__ == "__main__":
    main()
