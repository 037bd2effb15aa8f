#!/usr/bin/env python
"""
Times one training step (forward + backward) of ATSS R-50-FPN on one image with every
classification loss, as a ratio to the focal-loss step of the same model measured in the same
run, and the ATSS step against detectron2-style FCOS with the same backbone.

    python benchmarks/benchmark_detectors.py [--size 512] [--reps 5] [--rounds 2] [--loss-reps 20]
                                        [--threads 2] [--device cpu]

Per loss, one ATSS model runs alternately with focal loss and with that loss (the loss is a
constructor argument, swapped between steps): each pair of adjacent steps gives one ratio, and
the table reports the median over ``--reps`` x ``--rounds`` pairs, so drift of the machine
during the run cancels. It also times the classification loss alone (forward + backward on the
inputs the detector passed it, ``--loss-reps`` times) and gives its extra cost over focal loss
as a share of the focal step: a measure of the same thing that does not suffer from the
step-to-step noise of a full step on a shared CPU.

ATSS vs FCOS are different models: a throw-away model runs first (the first model of a process
is otherwise measured slower), then the two in turn for ``--rounds`` rounds; median over rounds
of the median of ``--reps`` steps.
"""
import argparse
import os
import statistics
import time

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from hpf.losses import (
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


def make_batch(height, width, device, num_boxes=10, max_box_fraction=0.3, seed=0):
    """One random image with ``num_boxes`` random boxes of 80 classes, as a one-image batch."""
    gen = torch.Generator().manual_seed(seed)
    inst = Instances((height, width))
    size = torch.tensor([width, height], dtype=torch.float32)
    xy = torch.rand(num_boxes, 2, generator=gen) * size * 0.7
    wh = torch.rand(num_boxes, 2, generator=gen) * size * max_box_fraction + 16
    inst.gt_boxes = Boxes(torch.cat([xy, torch.minimum(xy + wh, size - 1)], 1))
    inst.gt_classes = torch.randint(0, 80, (num_boxes,), generator=gen)
    image = torch.randint(0, 255, (3, height, width), generator=gen).to(torch.uint8)
    return [{"image": image.to(device), "instances": inst.to(device)}]


def timed(fn, device):
    """Seconds ``fn()`` takes, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def one_step(model, data, device):
    """Seconds of one forward + backward step (call it inside an ``EventStorage``)."""
    model.train()
    model.zero_grad(set_to_none=True)
    return timed(lambda: sum(model(data).values()).backward(), device)


def time_steps(model, data, reps, device):
    """Median time of ``reps`` forward+backward steps after one warm-up step, and the
    scalars the last step logged."""
    times = []
    with EventStorage() as storage:
        for i in range(reps + 1):
            storage.iter = i
            times.append(one_step(model, data, device))
        logged = {k: v[0] for k, v in storage.latest().items()}
    return statistics.median(times[1:]), logged


def alternate(step_a, step_b, pairs):
    """Runs ``step_a`` and ``step_b`` (each returns the seconds of one step) in turn ``pairs``
    times: their times and the ratio b / a of every pair of adjacent steps."""
    times_a, times_b = [], []
    for _ in range(pairs):
        times_a.append(step_a())
        times_b.append(step_b())
    return times_a, times_b, [b / a for a, b in zip(times_a, times_b)]


def build(config, device, **overrides):
    cfg = LazyConfig.load(os.path.join(REPO, config))
    for key, value in overrides.items():
        setattr(cfg.model, key, value)
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device)


def record_inputs(loss):
    """Makes ``loss`` keep a detached copy of the inputs of its last call in ``loss.inputs``."""
    forward = loss.forward

    def recording_forward(pred_logits, targets, normalizer, valid=None):
        loss.inputs = ([x.detach().clone() for x in pred_logits], targets, normalizer, valid)
        return forward(pred_logits, targets, normalizer, valid)

    loss.forward = recording_forward  # an instance attribute: nn.Module.__call__ uses it
    return loss


def time_loss_alone(loss, reps, device):
    """Median time of forward + backward of ``loss`` on its recorded inputs (after one warm-up)."""
    logits, targets, normalizer, valid = loss.inputs

    def call():
        leaves = [x.clone().requires_grad_() for x in logits]
        return lambda: loss(leaves, targets, normalizer, valid).backward()

    with EventStorage():
        times = [timed(call(), device) for _ in range(reps + 1)]
    return statistics.median(times[1:])


def paired_loss_steps(model, data, losses, pairs, device):
    """For every loss but focal: ``pairs`` times a focal step then a step with that loss, on the
    same model. Returns per loss the step times and the per-pair ratios to focal."""
    def step_with(name):
        def step():
            model.cls_loss = losses[name]
            model.loss_balance = GuidedLossScale() if name == "Sampling-Free" else None
            return one_step(model, data, device)
        return step

    steps = {"focal": []}
    ratios = {"focal": [1.0]}
    with EventStorage():
        for name in losses:  # warm-up of every loss (first-call allocations, running state)
            step_with(name)()
        for name in losses:
            if name != "focal":
                focal, steps[name], ratios[name] = alternate(
                    step_with("focal"), step_with(name), pairs)
                steps["focal"] += focal
    return steps, ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loss-reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    data = make_batch(args.size, args.size, device)

    def fcos():
        atss_backbone = LazyConfig.load(
            os.path.join(REPO, "configs/COCO-Detection/atss_R_50_FPN_1x.py")).model.backbone
        return build("configs/COCO-Detection/fcos_R_50_FPN_1x.py", device, backbone=atss_backbone)

    atss = lambda: build("configs/COCO-Detection/atss_R_50_FPN_1x.py", device)  # noqa: E731
    time_steps(atss(), data, 1, device)  # warm-up of the process, not reported
    arch = {"ATSS": [], "FCOS": []}
    for _ in range(args.rounds):
        arch["ATSS"].append(time_steps(atss(), data, args.reps, device)[0])
        arch["FCOS"].append(time_steps(fcos(), data, args.reps, device)[0])
    arch = {name: statistics.median(t) for name, t in arch.items()}

    losses = {name: record_inputs(cls(**kwargs)).to(device)
              for name, (cls, kwargs) in LOSSES.items()}
    steps, ratios = paired_loss_steps(atss(), data, losses, args.reps * args.rounds, device)
    alone = {name: time_loss_alone(loss, args.loss_reps, device) for name, loss in losses.items()}
    focal_step = statistics.median(steps["focal"])

    print(f"ATSS R-50-FPN, one {args.size}x{args.size} image, {device.type}, "
          f"{args.threads} threads; {args.reps * args.rounds} pairs of adjacent steps (focal, "
          f"loss) on one model per loss; loss alone: median of {args.loss_reps}\n")
    print("| classification loss | ms / step | x focal (median of pairs) | pair ratios min-max "
          "| loss fwd+bwd ms | extra over focal, share of the focal step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in LOSSES:
        extra = (alone[name] - alone["focal"]) / focal_step
        print(f"| {name} | {1000 * statistics.median(steps[name]):.0f} "
              f"| {statistics.median(ratios[name]):.3f} "
              f"| {min(ratios[name]):.3f}-{max(ratios[name]):.3f} "
              f"| {1000 * alone[name]:.1f} | {100 * extra:+.2f}% |")
    print(f"\nATSS (focal) {1000 * arch['ATSS']:.0f} ms vs FCOS (same R-50 pytorch-style "
          f"backbone, P6/P7 from P5) {1000 * arch['FCOS']:.0f} ms, median over {args.rounds} "
          f"rounds of the median of {args.reps} steps: ATSS / FCOS = "
          f"{arch['ATSS'] / arch['FCOS']:.3f}")


if __name__ == "__main__":
    main()
