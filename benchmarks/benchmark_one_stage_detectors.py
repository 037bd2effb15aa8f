#!/usr/bin/env python
"""
What GFL, VFNet and TOOD cost against ATSS: the training step (forward + backward) and the
inference of each R-50-FPN COCO config on one random image, as ratios to ATSS (focal loss)
measured in the same run.

    python benchmarks/benchmark_one_stage_detectors.py [--size 512] [--pairs 7] [--threads 2]
        [--device cpu] [--detectors gfl gfl_hpf vfnet vfnet_hpf tood tood_hpf]

Every model is built once; for each detector, ``--pairs`` times an ATSS step then a step of
the detector (and the same for inference), so that drift of the machine cancels in each pair's
ratio. TOOD is timed after its initial ATSS phase, with Task Alignment Learning. Printed
per detector: the median time, the median of the pair ratios and their
interquartile range and min-max.

The reference implementations state their own cost as inference time per image with
mmdetection on one GPU (ATSS 50.76 ms, GFL 51.28 ms: 1.010x; VFNet 19.4 fps against ATSS's
19.7 fps: 1.015x) and training memory (TOOD 4.1 GB against ATSS's 3.7 GB: 1.11x); the
inference ratio here is the comparable number.
"""
import argparse
import statistics

import torch
from detectron2.utils.events import EventStorage

from benchmark_detectors import alternate, build, make_batch, one_step, timed

CONFIGS = {
    "atss": "configs/COCO-Detection/atss_R_50_FPN_1x.py",
    "gfl": "configs/COCO-Detection/gfl_R_50_FPN_1x.py",
    "gfl_hpf": "configs/COCO-Detection/gfl_hpf_R_50_FPN_1x.py",
    "vfnet": "configs/COCO-Detection/vfnet_R_50_FPN_1x.py",
    "vfnet_hpf": "configs/COCO-Detection/vfnet_hpf_R_50_FPN_1x.py",
    "tood": "configs/COCO-Detection/tood_R_50_FPN_1x.py",
    "tood_hpf": "configs/COCO-Detection/tood_hpf_R_50_FPN_1x.py",
}


def inference(model, data, device):
    """Seconds of one inference of ``data``."""
    model.eval()
    with torch.no_grad():
        return timed(lambda: model(data), device)


def spread(ratios):
    """Median, interquartile range and min-max of the pair ratios."""
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return statistics.median(ratios), (q[0], q[2]), (min(ratios), max(ratios))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--detectors", nargs="+", default=[k for k in CONFIGS if k != "atss"],
                        choices=[k for k in CONFIGS if k != "atss"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    data = make_batch(args.size, args.size, device)
    models = {name: build(CONFIGS[name], device) for name in ["atss", *args.detectors]}

    rows = []
    # Past TOOD's initial ATSS phase: its steps are timed with Task Alignment Learning.
    with EventStorage(start_iter=10**7):
        def train_step(name):
            return lambda: one_step(models[name], data, device)

        for name in models:  # warm-up: first-call allocations of every model
            train_step(name)()
            inference(models[name], data, device)
        for name in args.detectors:
            atss_train, train, train_ratios = alternate(train_step("atss"), train_step(name),
                                                        args.pairs)
            atss_test, test, test_ratios = alternate(
                lambda: inference(models["atss"], data, device),
                lambda n=name: inference(models[n], data, device), args.pairs)
            rows.append((name, train, train_ratios, test, test_ratios))

    print(f"R-50-FPN COCO configs, one {args.size}x{args.size} image, {device.type}, "
          f"{args.threads} threads; {args.pairs} adjacent pairs (ATSS, detector) each\n")
    print("| detector | train ms / step | x ATSS (median) | IQR | min-max "
          "| inference ms | x ATSS (median) | IQR | min-max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, train, train_ratios, test, test_ratios in rows:
        cells = []
        for times, ratios in ((train, train_ratios), (test, test_ratios)):
            median, iqr, extremes = spread(ratios)
            cells += [f"{1000 * statistics.median(times):.0f}", f"{median:.3f}",
                      f"{iqr[0]:.3f}-{iqr[1]:.3f}", f"{extremes[0]:.3f}-{extremes[1]:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
