#!/usr/bin/env python
"""
The gradient density of a finished dense-detector run (GHM paper, Fig. 1 and 2): the
histogram of the classification gradient norm g = |sigmoid(x) - y| over every (anchor, class)
entry of the valid anchors, the share of the total gradient each g bin contributes under
cross-entropy, focal loss and GHM-C, and the histogram of the ASL1 gradient norm of the box
deltas of the positive anchors.

    python tools/analysis/gradient_density.py RUN_DIR [--checkpoint model_final.pth]
        [--num-images 50] [--bins 30] [--split train|test] [--output DIR] [--device cpu]

The run (a RetinaNet, FCOS or ATSS output directory of train_net.py) is rebuilt from its
``config.yaml`` and checkpoint, in eval mode (the checkpoint's batch-norm statistics), without
gradients. Images: the first ``--num-images`` records of the config's train (default) or test
dataset, through the training mapper with the *test* augmentations (the test resize, no random
flip): deterministic, and the annotations are kept (for the test split too). One image per
forward, so that no anchors lie on the padding between images of different sizes. Anchors are
labelled by the detector's own ``label_anchors``; ignored ones are left out. The GHM weights are
those of the whole set (one density over all images, no EMA).

Writes ``gradient_density.png`` (three panels), ``gradient_density.json`` (bin edges, counts,
weights, contributions, numbers of entries and positives) to ``--output`` (default RUN_DIR) and
prints a table per bin and a summary.
"""
import argparse
import copy
import json
import os
import sys

import torch

from hpf.analysis.runs import load_dense_run


def annotated_images(cfg, split="train", num_images=50):
    """
    The first ``num_images`` records of the config's ``split`` dataset, mapped by its training
    mapper with the test augmentations (deterministic, annotations kept).
    """
    from detectron2.config import instantiate

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    records = instantiate(cfg.dataloader[split].dataset)[:num_images]
    if not records:
        raise ValueError(f"The {split} dataset of the config has no images")
    if not any("annotations" in r for r in records):
        raise ValueError(f"The {split} dataset ({cfg.dataloader[split].dataset.get('names')}) "
                         f"has no annotations: no targets to measure gradients against")
    mapper_cfg = copy.deepcopy(cfg.dataloader.train.mapper)
    if "augmentations" not in mapper_cfg:
        raise ValueError(f"The training mapper ({mapper_cfg.get('_target_')}) takes no "
                         f"'augmentations': cannot swap in the test resize")
    mapper_cfg.is_train = True  # keeps the annotations
    mapper_cfg.augmentations = copy.deepcopy(cfg.dataloader.test.mapper.augmentations)
    mapper = instantiate(mapper_cfg)
    # Lazily: one mapped image in memory at a time.
    return (mapper(copy.deepcopy(record)) for record in records)


def measure(model, images, bins=30):
    """A ``GradientDensity`` of ``images`` (dataset dicts), one image per forward."""
    from hpf.analysis.gradient_density import GradientDensity, dense_gradient_norms

    density = GradientDensity(bins=bins)
    with torch.no_grad():
        for image in images:
            density.add(dense_gradient_norms(model, [image]), num_images=1)
    return density


def plot(summary, path, title=""):
    """The three panels of ``summary`` (``GradientDensity.summary()``) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    edges = np.array(summary["bin_edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    cls, box = summary["classification"], summary["regression"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))

    ax = axes[0]  # GHM Fig. 2: fraction of entries per g bin
    entries = max(summary["num_entries"], 1)
    ax.bar(centers, cls["fraction"], width=width, color="tab:blue", alpha=0.8,
           label=f"all entries ({summary['num_entries']})")
    ax.bar(centers, np.array(cls["positive_counts"]) / entries, width=width * 0.5,
           color="tab:red", label="entries with y = 1")
    ax.set(yscale="log", xlim=(0, 1), xlabel="gradient norm g = |p - y|",
           ylabel="fraction of entries", title="(a) classification gradient norm")
    ax.legend(fontsize=8)

    ax = axes[1]  # GHM Fig. 1, right: share of the total gradient norm per g bin
    for key, label, style in (("ce", "cross-entropy", "o-"), ("focal", "focal loss", "s-"),
                              ("ghm", "GHM-C", "^-")):
        values = np.array(cls["contribution"][key], dtype=float)
        values[values <= 0] = np.nan  # empty bins: no point on a log scale
        ax.plot(centers, values, style, markersize=3, label=label)
    ax.set(yscale="log", xlim=(0, 1), xlabel="gradient norm g",
           ylabel="fraction of the total gradient norm", title="(b) gradient contribution")
    ax.legend(fontsize=8)

    ax = axes[2]  # the regression counterpart: ASL1 gradient norm of the positives
    ax.bar(centers, box["fraction"], width=width, color="tab:green", alpha=0.8,
           label=f"box entries ({summary['num_box_entries']}, {summary['num_positives']} "
                 f"positive anchors)")
    ax.set(yscale="log", xlim=(0, 1), xlabel=f"ASL1 gradient norm |d| / sqrt(d² + μ²), "
           f"μ = {box['mu']:g}", ylabel="fraction of box entries",
           title="(c) regression gradient norm")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary):
    """The per-bin table and the summary, as markdown lines."""
    cls, box = summary["classification"], summary["regression"]
    edges = summary["bin_edges"]
    lines = [
        "| g bin | entries | fraction | y = 1 | GHM weight | CE | FL | GHM-C | box fraction |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for j in range(summary["bins"]):
        contribution = cls["contribution"]
        lines.append(
            f"| [{edges[j]:.3f}, {edges[j + 1]:.3f}{']' if j == summary['bins'] - 1 else ')'} "
            f"| {cls['counts'][j]} | {cls['fraction'][j]:.2e} | {cls['positive_counts'][j]} "
            f"| {cls['ghm_weights'][j]:.3g} | {contribution['ce'][j]:.2e} "
            f"| {contribution['focal'][j]:.2e} | {contribution['ghm'][j]:.2e} "
            f"| {box['fraction'][j]:.2e} |"
        )
    below = ", ".join(f"g < {t}: {v:.4f}" for t, v in cls["fraction_below"].items())
    above = ", ".join(f"g > {t}: {v:.2e}" for t, v in cls["fraction_above"].items())
    lines += [
        "",
        f"{summary['num_images']} images, {summary['num_anchors']} valid anchors, "
        f"{summary['num_entries']} classification entries, {summary['num_positives']} positive "
        f"anchors ({summary['num_box_entries']} box entries)",
        f"fraction of entries with {below}",
        f"fraction of entries with {above}",
    ]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run", help="output directory of train_net.py (a dense detector)")
    parser.add_argument("--checkpoint", default="model_final.pth",
                        help="checkpoint file in RUN_DIR (default model_final.pth)")
    parser.add_argument("--num-images", type=int, default=50,
                        help="first images of the dataset to measure on (default 50)")
    parser.add_argument("--bins", type=int, default=30,
                        help="equal bins on [0, 1] (default 30, GHM-C's)")
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="the config's train or test dataset (default train)")
    parser.add_argument("--output", default=None, help="folder of the outputs (default RUN_DIR)")
    parser.add_argument("--device", default="cpu", help="device to run the model on (default cpu)")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images must be >= 1, got {args.num_images}")
    if args.bins < 1:
        parser.error(f"--bins must be >= 1, got {args.bins}")
    torch.set_flush_denormal(True)

    cfg, model = load_dense_run(args.run, args.checkpoint, args.device)
    density = measure(model, annotated_images(cfg, args.split, args.num_images), args.bins)
    summary = density.summary()
    summary.update(run=os.path.abspath(args.run), checkpoint=args.checkpoint, split=args.split,
                   model=type(model).__name__)
    output = args.output or args.run
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "gradient_density.json"), "w") as f:
        json.dump(summary, f, indent=1)
    name = os.path.basename(os.path.normpath(args.run))
    plot(summary, os.path.join(output, "gradient_density.png"),
         f"{name} ({type(model).__name__}, {args.checkpoint}), {summary['num_images']} "
         f"{args.split} images")
    print("\n".join(table(summary)))
    print(f"\nWrote {os.path.join(output, 'gradient_density.png')} and gradient_density.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
