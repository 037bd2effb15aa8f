#!/usr/bin/env python
"""
Training curves of one or more runs from their metrics.json, as one PNG, and a table of the
last smoothed value of each curve.

    python tools/analysis/training_curves.py RUN_DIR [RUN_DIR ...] [--smooth 20] \\
        [--labels focal hpf] [--output training_curves.png]

RUN_DIR: a run's output folder (``train.output_dir``), or its metrics.json. Panels, each drawn
only when a run logged its keys: ``total_loss`` and each ``loss_*``; HPF's γ_ad and α_ad per
pyramid level (``gamma_ad/level<k>``, ``alpha_ad/level<k>``, §3.3 of the HPF paper); the
positives per image on each level (``num_pos/level<k>``); Sampling-Free's guided ratio r and
learned weights (``guided_ratio``, ``delta_sq``, ``sigma_sq/<loss>``, with the ``rpn/`` or
``roi_head/`` prefix of two-stage detectors); the learning rate; the evaluation AP
(``bbox/AP``, ``bbox/AP50``, ...: markers, not smoothed). Level k is named after the run's
``model.head_in_features`` in config.yaml (``p3`` -> P3), else P(3+k).

Smoothing: a *trailing* moving mean over the last ``--smooth`` iterations, i.e. over
``--smooth / train.log_period`` logged points (at least one: ``--smooth 1`` turns it off), so a
smoothed curve lags by about half a window; the raw curve is drawn faint behind it.
detectron2's JSONWriter already writes most scalars as the median of the last 20 iterations, so
with the default log period (20) the default window adds nothing. Several runs: one colour (or,
in panels with one line per level or key, one line style) per run.

The default output is ``training_curves.png`` in the first run's folder; ``--output`` takes a
folder or a ``.png`` file. A partial last line (a killed run) is skipped.
"""
import argparse
import logging
import math
import os
import re
import sys
from collections import OrderedDict

import numpy as np

from hpf.analysis.level_summaries import read_json_lines

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")
_AP_KEY = re.compile(r"^[\w-]+/AP(50|75|s|m|l)?$")  # bbox/AP ... not the per-category AP-<name>


# ----------------------------------------------------------------------------------------
# Helpers shared with level_discrepancy.py and gradient_drift.py


def moving_average(values, window):
    """
    Trailing moving mean: point i is the mean of points ``max(0, i - window + 1) .. i``, so the
    first points average what there is so far.

    Args:
        values (sequence of float): the curve.
        window (int): the window, >= 1 (1: no smoothing).

    Returns:
        ndarray: the smoothed curve, of the same length.
    """
    values = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"the smoothing window must be >= 1, got {window}")
    if values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, values.size + 1)
    start = np.maximum(0, end - window)
    return (cumulative[end] - cumulative[start]) / (end - start)


def window_points(iterations, smooth):
    """The number of points a window of ``smooth`` iterations spans on a curve logged at
    ``iterations`` (the median step between them), at least 1."""
    steps = np.diff(np.asarray(iterations, dtype=np.float64))
    steps = steps[steps > 0]
    step = float(np.median(steps)) if steps.size else 1.0
    return max(1, int(round(smooth / step)))


def run_labels(runs, labels=None):
    """One label per run: ``labels`` (checked), else the runs' folder names (their paths when
    two share a name)."""
    if labels:
        if len(labels) != len(runs):
            raise ValueError(f"--labels gives {len(labels)} label(s) for {len(runs)} run(s)")
        return list(labels)
    folders = [os.path.normpath(os.path.dirname(r) if os.path.isfile(r) else r) for r in runs]
    names = [os.path.basename(os.path.abspath(f)) for f in folders]
    return names if len(set(names)) == len(names) else folders


def output_file(output, runs, default_name):
    """The PNG to write: ``output`` when it names a ``.png``, ``<output>/default_name`` when it
    names a folder, else ``default_name`` in the first run's folder."""
    if output is None:
        first = runs[0]
        output = os.path.dirname(first) if os.path.isfile(first) else first
    if not output.lower().endswith(".png"):
        output = os.path.join(output, default_name)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    return output


def new_figure(num_panels, columns=3, panel_size=(4.6, 3.2), sharey=False):
    """A figure with ``num_panels`` axes on a grid (the extra ones hidden) and the axes list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, num_panels))
    rows = int(math.ceil(num_panels / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size[0] * columns,
                                                     panel_size[1] * rows),
                             squeeze=False, sharey=sharey)
    axes = list(axes.ravel())
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    return fig, axes[:num_panels]


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"Wrote {path}")


def markdown_table(header, rows):
    """A markdown table as a string: ``header`` and ``rows`` are lists of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


# ----------------------------------------------------------------------------------------
# metrics.json


def metrics_path(run):
    path = run if os.path.isfile(run) else os.path.join(run, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {run} a train_net.py output folder?")
    return path


def read_metrics(run):
    """
    The scalars of a run's metrics.json as ``{key: (iterations, values)}``, by iteration;
    non-finite values are left out, and where an iteration was logged twice (a resumed run
    trains it again) the later line is kept.

    Args:
        run (str): the output folder, or its metrics.json.

    Returns:
        dict[str, (ndarray, ndarray)]
    """
    path = metrics_path(run)
    by_iteration = {}
    for record in read_json_lines(path):
        if "iteration" not in record:
            continue
        by_iteration.setdefault(int(record["iteration"]), {}).update(record)
    series = {}
    for iteration in sorted(by_iteration):
        for key, value in by_iteration[iteration].items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                series.setdefault(key, ([], []))
                series[key][0].append(iteration)
                series[key][1].append(float(value))
    if not series:
        raise ValueError(f"{path} has no usable line (no scalar with an iteration)")
    return {k: (np.array(i), np.array(v)) for k, (i, v) in series.items()}


def level_names(run, num_levels=5):
    """The names of a run's levels (P3, ...), from ``head_in_features`` in its config.yaml when
    it lists them, else P3 .. P(3 + num_levels - 1)."""
    folder = os.path.dirname(run) if os.path.isfile(run) else run
    config = os.path.join(folder, "config.yaml")
    if os.path.isfile(config):
        with open(config) as f:
            match = re.search(r"^\s*head_in_features:\s*\[([^\]]*)\]", f.read(), re.MULTILINE)
        if match:
            names = [n.strip().strip("'\"").upper() for n in match.group(1).split(",")]
            if names and all(names):
                return names
    return [f"P{3 + k}" for k in range(num_levels)]


def _level_key(prefix, names):
    def name(key):
        k = int(key[len(prefix):])
        return names[k] if k < len(names) else f"P{3 + k}"
    return name


def panels_of(keys, names):
    """
    The panels to draw for the union of the runs' keys: a list of ``(title, [(key, member
    label)], kind)``, kind "curve" (smoothed) or "points" (AP: markers). Panels with one member
    draw one line per run; the others one line per member, a line style per run.
    """
    keys = set(keys)
    panels = []

    def group(title, members, kind="curve"):
        if members:
            panels.append((title, members, kind))

    for key in ["total_loss"] + sorted(k for k in keys if k.startswith("loss_")):
        group(key, [(key, key)] if key in keys else [])
    for prefix, title in (("gamma_ad/level", "γ_ad per level (HPF)"),
                          ("alpha_ad/level", "α_ad per level (HPF)"),
                          ("num_pos/level", "positives per image per level")):
        members = sorted((k for k in keys if re.fullmatch(re.escape(prefix) + r"\d+", k)),
                         key=lambda k: int(k[len(prefix):]))
        group(title, [(k, _level_key(prefix, names)(k)) for k in members])
    group("guided ratio r (Sampling-Free)",
          [(k, k[:-len("guided_ratio")].rstrip("/") or "r") for k in sorted(keys)
           if k.endswith("guided_ratio")])
    group("learned weights (Sampling-Free)",
          [(k, k) for k in sorted(keys) if k.split("/")[-1] == "delta_sq" or "sigma_sq/" in k])
    group("lr", [("lr", "lr")] if "lr" in keys else [])
    group("evaluation AP", [(k, k) for k in sorted(keys) if _AP_KEY.match(k)], "points")
    return panels


def compact_legend(ax, members, labels, markers=False):
    """A legend of one entry per member (its colour) and one per run (its line style and
    marker), instead of one per line. ``labels``: (index, label) of the runs drawn."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{m % 10}", label=member)
               for m, member in enumerate(members)]
    handles += [Line2D([], [], color="0.4", ls=LINE_STYLES[r % len(LINE_STYLES)],
                       marker=MARKERS[r % len(MARKERS)] if markers else None, label=label)
                for r, label in labels]
    ax.legend(handles=handles, fontsize=7)


def draw(runs_series, labels, panels, smooth, title=None):
    """The figure of ``panels`` (see :func:`panels_of`) for the runs' series, and the table's
    rows ``[(panel member, {label: last smoothed value})]``."""
    fig, axes = new_figure(len(panels))
    colours = [f"C{i % 10}" for i in range(10)]
    last_values = OrderedDict()
    for ax, (panel_title, members, kind) in zip(axes, panels):
        for r, (series, label) in enumerate(zip(runs_series, labels)):
            for m, (key, member) in enumerate(members):
                if key not in series:
                    continue
                iterations, values = series[key]
                if len(members) == 1:
                    colour, style, name = colours[r % 10], "-", label
                else:
                    colour, style = colours[m % 10], LINE_STYLES[r % len(LINE_STYLES)]
                    name = member
                if kind == "points":
                    ax.plot(iterations, values, style, color=colour, ms=5, label=name,
                            marker=MARKERS[r % len(MARKERS)])
                    last = values[-1]
                else:
                    window = window_points(iterations, smooth)
                    smoothed = moving_average(values, window)
                    if window > 1:
                        ax.plot(iterations, values, style, color=colour, alpha=0.25, lw=0.8)
                    ax.plot(iterations, smoothed, style, color=colour, lw=1.5, label=name)
                    last = smoothed[-1]
                row = key if member.lower() in key.lower() else f"{key} ({member})"
                last_values.setdefault(row, {})[label] = float(last)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        drawn = [(r, label) for r, (series, label) in enumerate(zip(runs_series, labels))
                 if any(key in series for key, _ in members)]
        if len(members) > 1 and len(runs_series) > 1:
            compact_legend(ax, [m for _, m in members], drawn, kind == "points")
        elif len(members) > 1 or len(runs_series) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, list(last_values.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output folders of train_net.py (or metrics.json)")
    parser.add_argument("--smooth", type=int, default=20,
                        help="trailing moving-mean window in iterations (1: none)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    parser.add_argument("--output", help="a .png file or a folder (default: the first run's)")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error("--smooth must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    labels = run_labels(args.runs, args.labels)
    runs_series = [read_metrics(run) for run in args.runs]
    names = level_names(args.runs[0])
    panels = panels_of(set().union(*runs_series), names)
    if not panels:
        raise ValueError(f"{', '.join(metrics_path(r) for r in args.runs)}: no key to draw "
                         "(total_loss, loss_*, lr, ...)")
    output = output_file(args.output, args.runs, "training_curves.png")
    smoothing = (f"trailing mean over {args.smooth} iterations" if args.smooth > 1
                 else "not smoothed")
    fig, rows = draw(runs_series, labels, panels, args.smooth,
                     title=f"training curves ({smoothing})")
    save_figure(fig, output)

    last_iterations = [max(int(i[-1]) for i, _ in s.values()) for s in runs_series]
    table = [["last iteration"] + [str(i) for i in last_iterations]]
    table += [[key] + [cell(values.get(label)) for label in labels] for key, values in rows]
    print(f"Last smoothed value ({smoothing}; AP: last evaluation):")
    print(markdown_table(["key"] + labels, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
