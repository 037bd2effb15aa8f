#!/usr/bin/env python
"""
Level discrepancy (the HPF paper, §3.2 and Fig. 3, second row): the proportion of a batch's
positive anchors on each pyramid level, recorded every iteration, as box plots per level, and
D_was, the 1-D Wasserstein distance between the best level's distribution of proportions and
each other level's.

    python tools/analysis/level_discrepancy.py RUN_DIR [RUN_DIR ...] [--labels focal hpf] \\
        [--best-level P3 | --level-ap level_ap.json] [--output level_discrepancy.png]

RUN_DIR: a run's output folder with ``level_statistics.json`` (train with
``train.level_statistics.enabled=True``), or that file. One panel per run, side by side on a
shared y axis; each box spans the quartiles of the level's per-iteration proportion, whiskers
1.5 IQR, the dot is the mean. Iterations whose batch had no positive are left out (and
counted in the table).

The best level: the paper takes the one with the highest level-wise AP. ``--best-level`` names
it for all runs; ``--level-ap`` reads it from a json, either what
``tools/analysis/level_ap.py`` writes, ``{"runs": [{"label": ..., "run_dir": ...,
"levels": {"P3": {"AP": ...}, ...}}, ...]}`` (runs matched by folder, else by label, else by
position; a level whose AP is null is left out), or a plain mapping ``{"P3": AP, ...}`` /
``{"P3": {"AP": AP}, ...}`` for every run, or ``{label: {"P3": AP, ...}}``. Without either,
the level with the highest mean proportion of positives (the level most positives are assigned
to; not necessarily the most accurate one).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from hpf.analysis.level_summaries import (
    level_names, positive_proportions, read_level_statistics, summarize_proportions,
)

# A sibling script (the script's folder is on sys.path when it runs as a script).
from training_curves import (
    cell, markdown_table, new_figure, output_file, run_labels, save_figure,
)


def _ap_value(value):
    """A level's AP from a number or ``{"AP": ...}``; NaN for null (a level without ground
    truth has no AP)."""
    if isinstance(value, dict):
        if "AP" not in value:
            raise ValueError(f"a level entry without 'AP': {value}")
        value = value["AP"]
    return float("nan") if value is None else float(value)


def _is_level_mapping(mapping):
    return isinstance(mapping, dict) and mapping and all(
        isinstance(k, str) and k.upper().startswith("P") and k[1:].isdigit() for k in mapping
    )


def read_level_ap(path, labels, runs=None):
    """
    The level-wise AP of each run from a json (see the module's docstring). The runs of a
    ``{"runs": [...]}`` json are matched by their ``run_dir``, else by label, else by position.

    Args:
        path (str): the json file.
        labels (list[str]): the runs' labels, in order.
        runs (list[str] or None): the runs' folders, in order.

    Returns:
        list[dict[str, float]]: per run, ``{"P3": AP, ...}`` (level names upper-case).
    """
    with open(path) as f:
        data = json.load(f)
    if _is_level_mapping(data):
        per_run = [data] * len(labels)
    else:
        by_folder = {}
        if isinstance(data, dict) and isinstance(data.get("runs"), list):
            entries = [(str(r.get("label")), r.get("levels")) for r in data["runs"]]
            by_folder = {os.path.realpath(r["run_dir"]): r.get("levels") for r in data["runs"]
                         if r.get("run_dir")}
        elif isinstance(data, dict) and all(_is_level_mapping(v) for v in data.values()):
            entries = list(data.items())
        else:
            raise ValueError(f"{path}: not a level AP json (see level_discrepancy.py --help)")
        by_label = dict(entries)
        folders = [os.path.realpath(os.path.dirname(r) if os.path.isfile(r) else r)
                   for r in runs or []]
        if folders and all(f in by_folder for f in folders):
            per_run = [by_folder[f] for f in folders]
        elif all(label in by_label for label in labels):
            per_run = [by_label[label] for label in labels]
        elif len(entries) == len(labels):
            per_run = [levels for _, levels in entries]
        elif len(entries) == 1:
            per_run = [entries[0][1]] * len(labels)
        else:
            raise ValueError(f"{path} has runs {[e[0] for e in entries]}; cannot match them to "
                             f"{labels} (use --labels)")
    return [{k.upper(): _ap_value(v) for k, v in levels.items()} for levels in per_run]


def best_level(names, proportions, best=None, level_ap=None, source=""):
    """
    The index of the best level and how it was chosen.

    Args:
        names (list[str]): the levels, "P3", ...
        proportions (ndarray): ``[N, L]`` per-iteration proportions.
        best (str or None): the level given by ``--best-level``.
        level_ap (dict or None): ``{"P3": AP, ...}``.
        source (str): the run, for error messages.
    """
    if best is not None:
        if best.upper() not in names:
            raise ValueError(f"--best-level {best}: {source} has levels {names}")
        return names.index(best.upper()), "given"
    if level_ap is not None:
        known = {k: v for k, v in level_ap.items() if k in names and np.isfinite(v)}
        if not known:
            raise ValueError(f"the level AP of {source} names none of its levels {names}")
        name = max(known, key=known.get)
        return names.index(name), f"AP {known[name]:.1f}"
    return int(np.argmax(proportions.mean(axis=0))), "highest mean proportion"


def draw_run(ax, names, proportions, summary, best, title):
    """Box plots of one run's per-level proportions, the means as dots, D_was above."""
    boxes = ax.boxplot(
        [proportions[:, i] for i in range(len(names))], patch_artist=True, widths=0.6,
        showmeans=True, meanprops=dict(marker="o", markerfacecolor="black",
                                       markeredgecolor="black", markersize=4),
        medianprops=dict(color="0.2"), flierprops=dict(markersize=2, alpha=0.4),
    )
    ax.set_xticks(range(1, len(names) + 1), names)
    for i, box in enumerate(boxes["boxes"]):
        box.set_facecolor("C1" if i == best else "C0")
        box.set_alpha(0.6)
    for i, d in enumerate(summary["d_was"]):
        text = "best" if i == best else f"D={d:.3f}"
        ax.annotate(text, (i + 1, 1.0), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=7)
    ax.set_title(title, fontsize=10, pad=14)
    ax.set_xlabel("pyramid level")
    ax.grid(axis="y", alpha=0.3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+",
                        help="output folders of train_net.py (or their level_statistics.json)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--best-level", help="the best level of every run, e.g. P3")
    choice.add_argument("--level-ap", help="a json of the level-wise AP of the runs")
    parser.add_argument("--output", help="a .png file or a folder (default: the first run's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    labels = run_labels(args.runs, args.labels)
    level_aps = ([None] * len(labels) if args.level_ap is None
                 else read_level_ap(args.level_ap, labels, args.runs))
    fig, axes = new_figure(len(args.runs), columns=len(args.runs), panel_size=(4.4, 3.8),
                           sharey=True)
    rows = []
    for ax, run, label, level_ap in zip(axes, args.runs, labels, level_aps):
        records = read_level_statistics(run)
        names = level_names(records)
        result = positive_proportions(records)
        if len(result.values) == 0:
            raise ValueError(f"{run}: none of its {len(records)} recorded iterations has a "
                             "positive")
        best, why = best_level(names, result.values, args.best_level, level_ap, run)
        summary = summarize_proportions(result.values, best)
        draw_run(ax, names, result.values, summary, best,
                 f"{label} ({len(result.values)} it., best {names[best]}: {why})")
        for i, name in enumerate(names):
            rows.append([label, name + (" (best)" if i == best else ""),
                         cell(summary["mean"][i]), cell(summary["std"][i]),
                         "-" if i == best else cell(summary["d_was"][i]),
                         str(len(result.values)), str(result.skipped)])
    axes[0].set_ylabel("proportion of positives per iteration")
    output = output_file(args.output, args.runs, "level_discrepancy.png")
    save_figure(fig, output)
    print("Proportion of the positives on each level, per iteration (D_was: Wasserstein "
          "distance to the best level's):")
    print(markdown_table(["run", "level", "mean", "std", "D_was", "iterations",
                          "skipped (no positive)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
