#!/usr/bin/env python
"""
Gradient drift (the HPF paper, §3.1 and Fig. 2): the share of the classification gradient
that hard entries contribute over training, against the easy ones' (1 - the hard share).

    python tools/analysis/gradient_drift.py RUN_DIR [RUN_DIR ...] [--labels focal hpf] \\
        [--smooth 20] [--quantity grad] [--output gradient_drift.png]

RUN_DIR: a run's output folder with ``level_statistics.json`` (train with
``train.level_statistics.enabled=True``), or that file. An entry (anchor x class logit of a
valid anchor) is hard when its binary cross-entropy exceeds the threshold t the run recorded
(``train.level_statistics.threshold``, shown in the title). Hard share = the sum of
``|d loss / d logit|`` over the hard entries of all levels / the sum over all entries; three
panels: all entries, positive entries only, negative entries only; one line per run, smoothed
by a trailing moving mean over ``--smooth`` iterations (``--smooth /
train.level_statistics.period`` records; the raw curve faint behind; iterations where the
panel's entries have no gradient, e.g. no positive, are left out).
``--quantity loss`` or ``count`` draws the shares of the summed cross-entropy or of the number
of entries instead.

The table gives the hard share at the start, the middle and the end of training: its mean over
the first, the middle and the last ``min(W, N // 3)`` records, W the records of a ``--smooth``
window and N the records with a share.
"""
import argparse
import logging
import sys

import numpy as np

from hpf.analysis.level_summaries import gradient_shares, read_level_statistics

# A sibling script (the script's folder is on sys.path when it runs as a script).
from training_curves import (
    cell, markdown_table, moving_average, new_figure, output_file, run_labels, save_figure,
    window_points,
)

SAMPLES = (("all", "all entries"), ("positive", "positive entries"),
           ("negative", "negative entries"))
QUANTITIES = {"grad": "|∂L/∂logit|", "loss": "cross-entropy", "count": "entries"}


def hard_share_curves(records, quantity="grad"):
    """
    The hard share of each kind of entry per recorded iteration.

    Args:
        records (list[dict]): records of ``read_level_statistics``.
        quantity (str): "grad", "loss" or "count".

    Returns:
        dict[str, (ndarray, ndarray)]: for "all", "positive", "negative": the iterations and
        the hard shares there (iterations without such entries left out).
    """
    iterations = np.array([r["iteration"] for r in records], dtype=np.int64)
    curves = {}
    for samples, _ in SAMPLES:
        hard, _ = gradient_shares(records, samples=samples, quantity=quantity)
        keep = np.isfinite(hard)
        curves[samples] = (iterations[keep], hard[keep])
    return curves


def phase_means(values, window):
    """Means of ``values`` over its first, middle and last ``min(window, N // 3)`` points (at
    least one), or NaNs when it is empty."""
    n = len(values)
    if n == 0:
        return [float("nan")] * 3
    w = max(1, min(window, n // 3))
    middle = max(0, (n - w) // 2)
    return [float(np.mean(values[:w])), float(np.mean(values[middle:middle + w])),
            float(np.mean(values[n - w:]))]


def _threshold_text(thresholds):
    distinct = sorted(set(round(t, 4) for t in thresholds))
    return ", ".join(f"{t:g}" for t in distinct)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+",
                        help="output folders of train_net.py (or their level_statistics.json)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    parser.add_argument("--smooth", type=int, default=20,
                        help="trailing moving-mean window in iterations (1: none)")
    parser.add_argument("--quantity", choices=sorted(QUANTITIES), default="grad",
                        help="share of the gradient (default), the loss or the entry count")
    parser.add_argument("--output", help="a .png file or a folder (default: the first run's)")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error("--smooth must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    labels = run_labels(args.runs, args.labels)
    runs = [read_level_statistics(run) for run in args.runs]
    thresholds = [r[0].get("threshold", float("nan")) for r in runs]
    for run, records in zip(args.runs, runs):
        if len({r.get("threshold") for r in records}) > 1:  # resumed with another t
            logging.warning(f"{run}: the records use different thresholds; the title gives the "
                            "first record's")
    fig, axes = new_figure(len(SAMPLES), columns=len(SAMPLES), panel_size=(4.6, 3.4))
    rows = []
    for r, (records, label, threshold) in enumerate(zip(runs, labels, thresholds)):
        curves = hard_share_curves(records, args.quantity)
        name = label if len(set(thresholds)) == 1 else f"{label} (t={threshold:.3g})"
        for ax, (samples, _) in zip(axes, SAMPLES):
            iterations, hard = curves[samples]
            if len(hard) == 0:
                continue
            window = window_points(iterations, args.smooth)
            if window > 1:
                ax.plot(iterations, hard, color=f"C{r % 10}", alpha=0.25, lw=0.8)
            ax.plot(iterations, moving_average(hard, window), color=f"C{r % 10}", lw=1.5,
                    label=name)
            start, middle, end = phase_means(hard, window)
            rows.append([label, samples, f"{iterations[0]}-{iterations[-1]}", cell(start, 3),
                         cell(middle, 3), cell(end, 3)])
    what = QUANTITIES[args.quantity]
    for ax, (_, title) in zip(axes, SAMPLES):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_ylabel(f"hard share of {what}")
    smoothing = (f"trailing mean over {args.smooth} iterations" if args.smooth > 1
                 else "not smoothed")
    fig.suptitle(f"Share of {what} from hard entries (BCE > t = "
                 f"{_threshold_text(thresholds)}; {smoothing})", fontsize=11)
    output = output_file(args.output, args.runs, "gradient_drift.png")
    save_figure(fig, output)
    print(f"Hard share of {what} (t = {_threshold_text(thresholds)}), mean over the first, "
          f"middle and last min({args.smooth} iterations, N // 3) records:")
    print(markdown_table(["run", "entries", "iterations", "start", "middle", "end"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
