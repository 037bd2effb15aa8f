#!/usr/bin/env python
"""
Profiles one training step (forward + backward) of a LazyConfig model on CPU: prints the
step time, the ops that took the most time (torch.profiler) and, for R-CNN models, the RoIs
every box-pooler call received (count, mean side, largest side): the numbers behind the
cost notes in projects/HPF/README.md and configs/Shapes/faster_rcnn_R18h_FPN.py.

    python benchmarks/profile_step.py --config-file configs/Shapes/faster_rcnn_R18h_FPN.py
    python benchmarks/profile_step.py --config-file configs/COCO-Detection/cascade_rcnn_R_50_FPN_1x.py \\
        --synthetic 800 1333 [--zero-deltas {none,rpn,all}] [key=value ...]

Without ``--synthetic`` the batch is the first one of the config's training loader (the shapes
configs); with it, one random image of that size (the COCO configs: no COCO here). Weights are
random; ``prior_prob="auto"`` is replaced by 0.01 (no statistics are gathered).
"""
import argparse
import time

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

# Sibling scripts (the script's folder is on sys.path when it runs as a script).
from benchmark_detectors import make_batch
from benchmark_rcnn import zero_box_deltas


def report_rois(pooler, stats):
    def hook(module, args):
        boxes = torch.cat([b.tensor for b in args[1]])
        sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        stats.append((len(boxes), (sides[:, 0] * sides[:, 1]).sqrt().mean().item(),
                      sides.max().item() if len(boxes) else 0.0))
    pooler.register_forward_pre_hook(hook)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--synthetic", nargs=2, type=int, metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--zero-deltas", choices=["none", "rpn", "all"], default="none",
                        help="zero the RPN's (rpn) and also the box predictors' (all) delta "
                             "layers, as benchmark_rcnn.py does (all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    proposal_generator = cfg.model.get("proposal_generator")
    if proposal_generator is not None and proposal_generator.get("prior_prob") == "auto":
        proposal_generator.prior_prob = 0.01
    if cfg.model.get("prior_prob") == "auto":
        cfg.model.prior_prob = 0.01
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    if args.zero_deltas != "none":
        zero_box_deltas(model, box_predictors=args.zero_deltas == "all")
    if args.synthetic:
        batch = make_batch(*args.synthetic, torch.device("cpu"), max_box_fraction=0.25)
    else:
        batch = next(iter(instantiate(cfg.dataloader.train)))
    rois = []
    if hasattr(model, "roi_heads"):
        report_rois(model.roi_heads.box_pooler, rois)

    def step():
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        sum(model(batch).values()).backward()
        return time.perf_counter() - start

    with EventStorage():
        warm = step()
        del rois[:]
        timed = step()
        rois = list(rois)  # the timed step's calls only
        with torch.profiler.profile() as prof:
            step()
    print(f"step: {timed:.3f} s (warm-up {warm:.3f} s), {args.threads} threads")
    for i, (n, mean_side, max_side) in enumerate(rois):
        print(f"box pooler call {i}: {n} RoIs, mean side {mean_side:.0f} px, largest {max_side:.0f} px")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
