#!/usr/bin/env python
"""
Prints the COCO box AP of several finished runs side by side, as a markdown table.

    python tools/compare_runs.py output/compare/seed0/focal output/compare/seed0/hpf ...

Runs whose directories share a name (the same config over several seeds, e.g.
output/compare/seed*/hpf) are also summarised: mean and range (min-max) over the seeds.
"""
import argparse
import glob
import json
import os
import sys

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def cell(value):
    """One decimal; "–" where COCO has no ground truth of that size (detectron2 writes NaN)."""
    return "–" if value != value else f"{value:.1f}"


def load_ap(run_dir):
    files = sorted(glob.glob(os.path.join(run_dir, "eval_*.json")))
    if not files:
        raise FileNotFoundError(f"No eval_*.json in {run_dir}: has the run finished?")
    with open(files[0]) as f:
        return json.load(f)["bbox"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py")
    args = parser.parse_args(argv)
    rows = [(os.path.basename(os.path.normpath(r)), load_ap(r)) for r in args.runs]
    print("| run | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for name, ap in rows:
        print(f"| {name} | " + " | ".join(cell(ap[m]) for m in METRICS) + " |")
    groups = {}
    for name, ap in rows:
        groups.setdefault(name, []).append(ap)
    if any(len(g) > 1 for g in groups.values()):
        print("\n| run | seeds | " + " | ".join(f"{m} mean (min-max)" for m in METRICS) + " |")
        print("|---|---:|" + "---:|" * len(METRICS))
        for name, aps in groups.items():
            cells = []
            for m in METRICS:
                values = [ap[m] for ap in aps]
                if any(v != v for v in values):
                    cells.append("–")
                    continue
                cells.append(f"{cell(sum(values) / len(values))} ({cell(min(values))}-"
                             f"{cell(max(values))})")
            print(f"| {name} | {len(aps)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
