#!/usr/bin/env python
"""
Level-wise AP of finished dense-detector runs (the HPF paper's Table 3 and its AP-IoU curves
per pyramid level): each level is evaluated on the ground truths the detector's own assignment
puts on it, with that level's detections only (``hpf.analysis.level_ap``).

    python tools/analysis/level_ap.py RUN_DIR [RUN_DIR ...] [--checkpoint model_final.pth]
        [--labels focal hpf] [--max-images N] [--output DIR]

Each RUN_DIR is an output directory of train_net.py (a RetinaNet, FCOS or ATSS run), rebuilt
from its ``config.yaml`` and checkpoint, in eval mode on CPU, and run on its config's test set
(``dataloader.test``: its dataset and mapper). The first run is the reference: the table gives
the others' numbers with their difference to it, as Table 3 does ("22.9 (+0.3)").

Writes ``level_ap.json`` (per run and level: AP, AP50, AP75, ``ap_per_iou``, ``num_gt``; per
run the ground truths assigned to no level) and ``level_ap.png`` (per level, AP against the
IoU threshold, a line per run) to ``--output`` (default: the first RUN_DIR), and prints the
table in markdown. AP in %; a level without ground truth has no AP (null, "-").
"""
import argparse
import json
import math
import os
import sys

import torch

from hpf.analysis.runs import load_dense_run

METRICS = ("AP", "AP50", "AP75")


def measure_run(run_dir, checkpoint="model_final.pth", max_images=None):
    """The level-wise AP of one run: {"levels": {name: AP dict}, "num_images", "num_gt",
    "num_unassigned"}."""
    from detectron2.config import instantiate
    from hpf.analysis.level_ap import collect_image_levels, level_ap, level_names

    cfg, model = load_dense_run(run_dir, checkpoint)
    records = instantiate(cfg.dataloader.test.dataset)
    if max_images is not None:
        records = records[:max_images]
    if not records:
        raise ValueError(f"{run_dir}: the test dataset of the config has no images")
    mapper = instantiate(cfg.dataloader.test.mapper)
    images = collect_image_levels(model, records, mapper)
    names = level_names(model)
    levels = level_ap(images, len(names), model.num_classes, names)
    num_gt = sum(len(im.gt_levels) for im in images)
    unassigned = sum(int((im.gt_levels < 0).sum()) for im in images)
    return {"levels": levels, "num_images": len(images), "num_gt": num_gt,
            "num_unassigned": unassigned}


def _cell(value, reference=None):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if reference is None or (isinstance(reference, float) and math.isnan(reference)):
        return f"{value:.1f}"
    return f"{value:.1f} ({value - reference:+.1f})"


def table(results):
    """Table 3's layout as markdown lines: per run the rows AP, AP50, AP75 and the number of
    ground truths, a column per level; runs after the first with their difference to it.

    Args:
        results: [(label, measure_run's dict)], the first is the reference.
    """
    names = list(results[0][1]["levels"])
    lines = ["| model | metric | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    reference = results[0][1]["levels"]
    for index, (label, result) in enumerate(results):
        levels = result["levels"]
        if list(levels) != names:
            raise ValueError(f"{label}: levels {list(levels)} differ from the first run's {names}")
        for metric in METRICS:
            cells = [_cell(levels[n][metric], None if index == 0 else reference[n][metric])
                     for n in names]
            lines.append(f"| {label} | {metric} | " + " | ".join(cells) + " |")
        lines.append(f"| {label} | GT | " + " | ".join(str(levels[n]["num_gt"]) for n in names)
                     + " |")
    return lines


def plot(results, path):
    """One panel per level: AP against the IoU threshold (0.50 ... 0.95), a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpf.analysis.level_ap import IOU_THRESHOLDS

    names = list(results[0][1]["levels"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, result in results:
            aps = [math.nan if v is None else v for v in result["levels"][name]["ap_per_iou"]]
            ax.plot(IOU_THRESHOLDS, aps, "o-", markersize=3,
                    label=f"{label} ({result['levels'][name]['num_gt']} GT)")
        if all(result["levels"][name]["AP"] is None for _, result in results):
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        ax.set(title=name, xlabel="IoU threshold", xlim=(0.48, 0.97), ylim=(0, None))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("AP (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py")
    parser.add_argument("--checkpoint", default="model_final.pth",
                        help="checkpoint file name inside each run directory")
    parser.add_argument("--labels", nargs="+", help="one name per run (default: folder names)")
    parser.add_argument("--max-images", type=int, help="only the first N test images")
    parser.add_argument("--output", help="where the json and png go (default: the first run)")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs")
    if args.max_images is not None and args.max_images < 1:
        parser.error("--max-images must be at least 1")
    torch.set_flush_denormal(True)  # detectors trained from scratch hit denormals on CPU

    results = []
    with torch.no_grad():
        for label, run in zip(labels, args.runs):
            results.append((label, measure_run(run, args.checkpoint, args.max_images)))
    output = args.output or args.runs[0]
    os.makedirs(output, exist_ok=True)
    from hpf.analysis.level_ap import IOU_THRESHOLDS

    record = {
        "iou_thresholds": list(IOU_THRESHOLDS),
        "checkpoint": args.checkpoint,
        "runs": [dict(label=label, run_dir=os.path.abspath(run), **result)
                 for (label, result), run in zip(results, args.runs)],
    }
    with open(os.path.join(output, "level_ap.json"), "w") as f:
        json.dump(record, f, indent=1)
    plot(results, os.path.join(output, "level_ap.png"))
    print("\n".join(table(results)))
    for label, result in results:
        print(f"{label}: {result['num_images']} images, {result['num_gt']} ground truths, "
              f"{result['num_unassigned']} assigned to no level (no positive anchor)")
    print(f"Wrote {os.path.join(output, 'level_ap.json')} and level_ap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
