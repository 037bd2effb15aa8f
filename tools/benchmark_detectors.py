#!/usr/bin/env python
"""
Times one training step (forward + backward) of ATSS R-50-FPN on one image with every
classification loss, as a ratio to the focal-loss step of the same model measured in the same
run, and the ATSS step against detectron2-style FCOS with the same backbone.

    python tools/benchmark_detectors.py [--size 512] [--reps 5] [--rounds 2] [--threads 2]
                                        [--device cpu]

Prints a markdown table: per model, the median over ``--rounds`` rounds of the median of
``--reps`` steps after one warm-up step. A throw-away model runs first (the first model of a
process is otherwise measured slower), and the rounds visit the models in turn, so no model
gets a fixed position in the run.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hpf.losses import (  # noqa: E402
    FocalLoss,
    GHMCLoss,
    GuidedLossScale,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    QualityFocalLoss,
    SamplingFreeCELoss,
    VarifocalLoss,
)

LOSSES = {
    "focal": (FocalLoss, {}),
    "HPF (level)": (ProgressiveFocalLoss, {}),
    "HPF (all)": (ProgressiveFocalLoss, {"sampling": "all"}),
    "HPF (image)": (ProgressiveFocalLoss, {"sampling": "image"}),
    "QFL": (QualityFocalLoss, {}),
    "VFL": (VarifocalLoss, {}),
    "PF-QFL": (ProgressiveQualityFocalLoss, {}),
    "PF-VFL": (ProgressiveVarifocalLoss, {"w": 1.5}),
    "GHM-C": (GHMCLoss, {}),
    "Sampling-Free": (SamplingFreeCELoss, {}),
}


def make_batch(size, device, num_boxes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inst = Instances((size, size))
    xy = torch.rand(num_boxes, 2, generator=gen) * size * 0.7
    wh = torch.rand(num_boxes, 2, generator=gen) * size * 0.3 + 16
    inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1))
    inst.gt_classes = torch.randint(0, 80, (num_boxes,), generator=gen)
    image = torch.randint(0, 255, (3, size, size), generator=gen).to(torch.uint8)
    return [{"image": image.to(device), "instances": inst}]


def time_steps(model, data, reps, device):
    """Median time of ``reps`` forward+backward steps after one warm-up step, and the
    scalars the last step logged."""
    model.train()
    times = []
    with EventStorage() as storage:
        for i in range(reps + 1):
            storage.iter = i
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            sum(model(data).values()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        logged = {k: v[0] for k, v in storage.latest().items()}
    return statistics.median(times[1:]), logged


def build(config, device, **overrides):
    cfg = LazyConfig.load(os.path.join(REPO, config))
    for key, value in overrides.items():
        setattr(cfg.model, key, value)
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    data = make_batch(args.size, device)

    def atss(name):
        cls, kwargs = LOSSES[name]
        extra = {"cls_loss": cls(**kwargs)}
        if name == "Sampling-Free":
            extra["loss_balance"] = GuidedLossScale()
        return build("configs/COCO-Detection/atss_R_50_FPN_1x.py", device, **extra)

    def fcos():
        atss_backbone = LazyConfig.load(
            os.path.join(REPO, "configs/COCO-Detection/atss_R_50_FPN_1x.py")).model.backbone
        return build("configs/COCO-Detection/fcos_R_50_FPN_1x.py", device, backbone=atss_backbone)

    time_steps(atss("focal"), data, 1, device)  # warm-up of the process, not reported
    models = {name: (lambda name=name: atss(name)) for name in LOSSES}
    models["FCOS"] = fcos
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, make in models.items():
            times[name].append(time_steps(make(), data, args.reps, device)[0])
    results = {name: statistics.median(t) for name, t in times.items()}

    print(f"ATSS R-50-FPN, one {args.size}x{args.size} image, {device.type}, "
          f"{args.threads} threads, median over {args.rounds} rounds of the median of "
          f"{args.reps} forward+backward steps\n")
    print("| classification loss | ms / step | x focal |")
    print("|---|---:|---:|")
    for name in LOSSES:
        print(f"| {name} | {1000 * results[name]:.0f} | {results[name] / results['focal']:.3f} |")
    print(f"\nATSS (focal) {1000 * results['focal']:.0f} ms vs FCOS (same R-50 pytorch-style "
          f"backbone, P6/P7 from P5) {1000 * results['FCOS']:.0f} ms: ATSS / FCOS = "
          f"{results['focal'] / results['FCOS']:.3f}")


if __name__ == "__main__":
    main()
