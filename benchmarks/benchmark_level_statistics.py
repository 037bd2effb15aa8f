#!/usr/bin/env python
"""
What recording level statistics (``train.level_statistics.enabled=True``: the
``RecordLevelStatistics`` hook) costs a training step: ATSS with HPF, one step with the
recorder and one without, in turn, on the same model and batch.

    python benchmarks/benchmark_level_statistics.py [--size 512] [--pairs 15] [--threads 2]
        [--device cpu] [--models "ATSS R-50 512" "ATSS shapes"]

Models: ATSS + HPF R-50-FPN (80 classes) on one random image of ``--size`` x ``--size``
("ATSS R-50 512"), and the ``make demo`` model (half-width ResNet-18 FPN, 4 classes) on one
random 224 x 320 image with 6 boxes ("ATSS shapes"), where the backbone is small and the
classification a larger part of the step. The recording step includes what the hook does
after it on one process: collecting the sums and writing them as a JSON line (to memory).

Printed per model: the median step time without the recorder, and the ratio with / without
over ``--pairs`` adjacent pairs (median, interquartile range, min-max). Target: <= 1.05.
"""
import argparse
import io
import json
import statistics

import torch
from detectron2.utils.events import EventStorage

from benchmark_detectors import alternate, build, make_batch, one_step, timed
from hpf.analysis.level_statistics import LevelStatisticsRecorder, sums_to_record

MODELS = {
    "ATSS R-50 512": ("configs/COCO-Detection/atss_hpf_R_50_FPN_1x.py", None),
    "ATSS shapes": ("configs/Shapes/atss_R18h_FPN_hpf_demo.py", (224, 320)),
}


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q[0], statistics.median(values), q[2]


def measure(name, size, pairs, device):
    config, shape = MODELS[name]
    height, width = shape or (size, size)
    model = build(config, device).train()
    num_classes = model.num_classes
    data = make_batch(height, width, device, num_boxes=6 if shape else 10)
    for d in data:  # make_batch draws 80 classes
        d["instances"].gt_classes %= num_classes
    recorder = LevelStatisticsRecorder(model.head_in_features)
    sink = io.StringIO()

    def without():
        model.level_statistics = None
        return one_step(model, data, device)

    def with_recorder():
        model.level_statistics = recorder
        return one_step(model, data, device) + timed(write, device)

    def write():
        record = sums_to_record(recorder.collect(), 0, recorder.levels, recorder.threshold)
        sink.write(json.dumps(record) + "\n")

    with EventStorage():
        without(), with_recorder()  # warm-up
        base, rec, ratios = alternate(without, with_recorder, pairs)
    q1, med, q3 = quartiles(ratios)
    return statistics.median(base), med, q1, q3, min(ratios), max(ratios)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    print(f"{args.pairs} pairs, {args.threads} threads, {device}")
    print("| model | step without (s) | with / without: median | IQR | min-max |")
    print("|---|---:|---:|---|---|")
    for name in args.models:
        base, med, q1, q3, lo, hi = measure(name, args.size, args.pairs, device)
        print(f"| {name} | {base:.3f} | {med:.3f} | {q1:.3f}-{q3:.3f} | {lo:.3f}-{hi:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
