#!/usr/bin/env python
"""Speed of hpf.modeling.matcher.ATSSMatcher for one image.

All anchors of an 800x1333 image as the ATSS detector makes them (DefaultAnchorGenerator,
one 8*stride square per location, strides 8-128, offset 0: 16700/4200/1050/273/77 = 22,300
anchors) against --gts random ground-truth boxes. Prints milliseconds per call (median over
--reps after --warmup calls; min too) on CPU, and on CUDA when available.

    python benchmarks/benchmark_atss_matcher.py --threads 2
"""

import argparse
import math
import statistics
import time

import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from hpf.modeling.matcher import ATSSMatcher

STRIDES = (8, 16, 32, 64, 128)


def make_inputs(height, width, num_gts, device, seed=0):
    gen = DefaultAnchorGenerator(
        sizes=[[64], [128], [256], [512], [1024]], aspect_ratios=[[1.0]],
        strides=list(STRIDES), offset=0.0,
    )
    feats = [torch.zeros(1, 1, math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    anchors = [b.tensor.to(device) for b in gen(feats)]
    g = torch.Generator().manual_seed(seed)
    wh = 8 + 400 * torch.rand(num_gts, 2, generator=g) ** 2  # mostly small, some large
    c = torch.rand(num_gts, 2, generator=g) * torch.tensor([width, height])
    gts = torch.cat([c - wh / 2, c + wh / 2], dim=1).clamp(min=0)
    gts[:, 2].clamp_(max=width)
    gts[:, 3].clamp_(max=height)
    return anchors, gts.to(device)


def time_ms(fn, device, warmup, reps):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gts", type=int, default=100)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    for device in devices:
        anchors, gts = make_inputs(args.height, args.width, args.gts, device)
        num_anchors = sum(len(a) for a in anchors)
        for stable in (False, True):
            matcher = ATSSMatcher(topk=9, stable_ties=stable)
            ms, best = time_ms(lambda: matcher(anchors, gts), device, args.warmup, args.reps)
            num_pos = int((matcher(anchors, gts) >= 0).sum())
            where = device if device == "cuda" else f"cpu, {args.threads} threads"
            print(f"ATSSMatcher(stable_ties={stable}) {where}: {ms:.2f} ms median of "
                  f"{args.reps} (min {best:.2f}; {num_anchors} anchors, {args.gts} GTs, "
                  f"{num_pos} positives)")


if __name__ == "__main__":
    main()
