#!/usr/bin/env python
"""Forward+backward speed of the hpf.losses losses vs sigmoid_focal_loss, measured in one run.

Inputs have the size of an ATSS R-50 step at 800x1333 (padded 800x1344): per image
16800/4200/1050/273/77 anchors on P3-P7 (22,400), 80 classes, batch 2, ~150 positives per
image. Prints milliseconds (median over --reps) and the ratio to sigmoid_focal_loss; then, with
--pairs N (default 15), each loss timed in N interleaved pairs with sigmoid_focal_loss on the
same inputs (the order alternating within the pairs): the median of the N ratios and their
spread. The paired ratio is the robust one on a loaded machine.

    python benchmarks/benchmark_losses.py --threads 2 --pairs 15
    python benchmarks/benchmark_losses.py --threads 2 --pairs 15 --compile --cases Progressive
"""

import argparse
import re
import statistics
import time

import torch

from hpf.losses import (
    GHMCLoss,
    GHMRLoss,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    quality_focal_loss,
    sampling_free_ce_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)

ANCHORS_PER_LEVEL = (16800, 4200, 1050, 273, 77)  # 1 anchor per location, strides 8..128
BASE = "sigmoid_focal_loss"


def make_inputs(batch, classes, positives_per_image, device, seed=0, anchors=ANCHORS_PER_LEVEL):
    gen = torch.Generator().manual_seed(seed)
    total = sum(anchors)
    bounds = torch.tensor((0,) + tuple(anchors)).cumsum(0).tolist()
    positives_per_image = min(positives_per_image, total)
    # Logits around the trained regime: most scores low, positives higher.
    logits = torch.randn(batch, total, classes, generator=gen) * 1.5 - 4.0
    targets = torch.zeros(batch, total, classes)
    quality = torch.zeros(batch, total, classes)
    for b in range(batch):
        chosen = torch.randperm(total, generator=gen)[:positives_per_image]
        labels = torch.randint(classes, (positives_per_image,), generator=gen)
        # Positives with -log sigmoid(x) around 2, so that gamma_ad falls inside
        # [gamma - delta, gamma + delta] (a clamped 1.5 or 2.5 would hit fast pow paths).
        logits[b, chosen, labels] = -1.8 + 0.5 * torch.randn(positives_per_image, generator=gen)
        targets[b, chosen, labels] = 1.0
        quality[b, chosen, labels] = 0.3 + 0.65 * torch.rand(positives_per_image, generator=gen)

    def per_level(t, grad=False):
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out.append(t[:, lo:hi].contiguous().to(device).requires_grad_(grad))
        return out

    num_pos = float(batch * positives_per_image)
    deltas = torch.randn(int(num_pos), 4, generator=gen) * 0.2
    return {
        "flat_logits": logits.reshape(-1, classes).to(device).requires_grad_(True),
        "flat_targets": targets.reshape(-1, classes).to(device),
        "flat_quality": quality.reshape(-1, classes).to(device),
        "logits": per_level(logits, grad=True),
        "targets": per_level(targets),
        "quality": per_level(quality),
        "num_pos": num_pos,
        "box_pred": deltas.to(device).requires_grad_(True),
        "box_target": torch.zeros(int(num_pos), 4).to(device),
    }


def cases(inp, compiled=False):
    """name -> (closure returning the loss, leaf tensors to differentiate). ``compiled`` adds
    the torch.compile path of ProgressiveFocalLoss."""
    n = inp["num_pos"]
    flat_x, flat_t, flat_q = inp["flat_logits"], inp["flat_targets"], inp["flat_quality"]
    xs, ts, qs = inp["logits"], inp["targets"], inp["quality"]
    pfl = {s: ProgressiveFocalLoss(sampling=s) for s in ("level", "all", "image")}
    pfq, pfv = ProgressiveQualityFocalLoss(), ProgressiveVarifocalLoss()
    ghmc, ghmc_levels = GHMCLoss(), GHMCLoss()
    ghmr = GHMRLoss(loss_weight=1.0)
    dev = flat_x.device
    ghmc.to(dev), ghmc_levels.to(dev), ghmr.to(dev)
    out = {
        BASE: (
            lambda: sigmoid_focal_loss(flat_x, flat_t, reduction="sum") / n,
            [flat_x],
        ),
        # What detectron2's RetinaNet / FCOS do: join the levels, then one focal loss.
        "sigmoid_focal_loss on joined levels": (
            lambda: sigmoid_focal_loss(
                torch.cat([x.flatten(0, 1) for x in xs]), torch.cat([t.flatten(0, 1) for t in ts]),
                reduction="sum") / n,
            xs,
        ),
        "ProgressiveFocalLoss(level)": (lambda: pfl["level"](xs, ts, n), xs),
        "ProgressiveFocalLoss(all)": (lambda: pfl["all"](xs, ts, n), xs),
        "ProgressiveFocalLoss(image)": (lambda: pfl["image"](xs, ts, n), xs),
        "quality_focal_loss": (
            lambda: quality_focal_loss(flat_x, flat_q, reduction="sum") / n,
            [flat_x],
        ),
        "varifocal_loss": (lambda: varifocal_loss(flat_x, flat_q, reduction="sum") / n, [flat_x]),
        "ProgressiveQualityFocalLoss": (lambda: pfq(xs, qs, n), xs),
        "ProgressiveVarifocalLoss": (lambda: pfv(xs, qs, n), xs),
        "GHMCLoss (one call)": (lambda: ghmc([flat_x], [flat_t], n), [flat_x]),
        "GHMCLoss (per level, as official)": (
            lambda: ghmc_levels([x.flatten(0, 1) for x in xs], [t.flatten(0, 1) for t in ts], n),
            xs,
        ),
        "sampling_free_ce_loss": (lambda: sampling_free_ce_loss(flat_x, flat_t, n), [flat_x]),
        "GHMRLoss (positives x 4 only)": (
            lambda: ghmr([inp["box_pred"]], [inp["box_target"]]),
            [inp["box_pred"]],
        ),
    }
    if compiled:
        for s in ("level", "image"):
            loss = ProgressiveFocalLoss(sampling=s, compile=True)
            out[f"ProgressiveFocalLoss({s}, compile=True)"] = (
                lambda loss=loss: loss(xs, ts, n), xs)
    return out


def step(fn, leaves):
    torch.autograd.grad(fn(), leaves)


def timed(fn, leaves, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(fn, leaves)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_cases(all_cases, reps, warmup, device):
    """Median ms per case. Cases run round-robin within each repetition, so that load from
    other processes affects all of them alike and the ratios stay meaningful."""
    for _ in range(warmup):
        for fn, leaves in all_cases.values():
            step(fn, leaves)
    times = {name: [] for name in all_cases}
    for _ in range(reps):
        for name, (fn, leaves) in all_cases.items():
            times[name].append(timed(fn, leaves, device))
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def quartiles(values):
    """(first quartile, median, third quartile) of a list (linear interpolation)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def time_pairs(all_cases, pairs, device):
    """Per case but the base: the times (case, base) of ``pairs`` interleaved pairs, the two in
    alternating order (so that a drift in the load favours neither)."""
    base_fn, base_leaves = all_cases[BASE]
    times = {}
    for name, (fn, leaves) in all_cases.items():
        if name == BASE:
            continue
        step(base_fn, base_leaves)
        step(fn, leaves)  # warm up this case (a first call may compile or allocate)
        times[name] = []
        for i in range(pairs):
            if i % 2 == 0:
                base_s, case_s = timed(base_fn, base_leaves, device), timed(fn, leaves, device)
            else:
                case_s, base_s = timed(fn, leaves, device), timed(base_fn, base_leaves, device)
            times[name].append((case_s, base_s))
    return times


def run(device, args):
    anchors = tuple(args.anchors)
    inp = make_inputs(args.batch, args.classes, args.positives, device, anchors=anchors)
    all_cases = cases(inp, compiled=args.compile)
    if args.cases:
        pattern = re.compile(args.cases)
        all_cases = {
            k: v for k, v in all_cases.items()
            if k in (BASE, "sigmoid_focal_loss on joined levels") or pattern.search(k)
        }
    results = time_cases(all_cases, args.reps, args.warmup, device)
    base = results[BASE]
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    title = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\n### {title}{threads}: batch {args.batch}, {sum(anchors)} anchors/image, "
        f"{args.classes} classes, median of {args.reps}\n"
    )
    joined = results["sigmoid_focal_loss on joined levels"]
    print("| loss (forward+backward) | ms | x focal | x focal on joined levels |")
    print("|---|---:|---:|---:|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {ms / joined:.2f} |")
    if args.pairs > 0:
        paired = time_pairs(all_cases, args.pairs, device)
        print(
            f"\nPaired with {BASE} ({args.pairs} interleaved pairs per loss; ratio = loss time "
            f"/ {BASE} time of the same pair; fastest: the fastest loss time / the fastest "
            f"{BASE} time, the least disturbed by other load):\n"
        )
        print("| loss (forward+backward) | x focal, median | IQR | min-max | fastest |")
        print("|---|---:|---:|---:|---:|")
        for name, pairs in paired.items():
            ratios = [case_s / base_s for case_s, base_s in pairs]
            q1, median, q3 = quartiles(ratios)
            fastest = min(c for c, _ in pairs) / min(b for _, b in pairs)
            print(
                f"| {name} | {median:.2f} | {q1:.2f}-{q3:.2f} | "
                f"{min(ratios):.2f}-{max(ratios):.2f} | {fastest:.2f} |"
            )
    level_fn = ProgressiveFocalLoss()
    level_fn(inp["logits"], inp["targets"], inp["num_pos"])
    print(
        "\ngamma_ad per level in these inputs:", [round(g, 3) for g in level_fn.last_gamma.tolist()]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CPU, plus CUDA when available",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--pairs", type=int, default=15,
        help="interleaved (sigmoid_focal_loss, loss) pairs per loss; 0: no paired table",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--positives", type=int, default=150, help="positives per image")
    parser.add_argument(
        "--anchors", type=lambda s: [int(n) for n in s.split(",")], default=ANCHORS_PER_LEVEL,
        help="anchors per image on each level, comma-separated (default: ATSS at 800x1333)",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="also time ProgressiveFocalLoss(compile=True) (torch.compile; the warm-up compiles)",
    )
    parser.add_argument(
        "--cases", default="", help="regular expression: time only the losses it matches "
        "(and the two focal baselines)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, args)


if __name__ == "__main__":
    main()
