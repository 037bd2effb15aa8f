#!/usr/bin/env python
"""
One training step (forward + backward) of Faster R-CNN R-50-FPN and Cascade R-CNN R-50-FPN
with Sampling-Free against the biased-sampling baseline, on the same image: time and peak
memory (CPU: the process's peak RSS; CUDA: max allocated) as ratios to the baseline measured
in the same run.

    python benchmarks/benchmark_rcnn.py [--height 800 --width 1333] [--pairs 5] [--rounds 2]
                                   [--threads 2] [--device cpu]
                                   [--models "Faster R-CNN"] [--variants Sampling-Free]

Time: the baseline and the variant are built in one process and step in turn, ``--pairs``
times after one warm-up step each; the ratio is the median over the pairs of adjacent steps, so
drift of the machine cancels. Memory: every (model, variant) runs in a process of its own (one
warm-up and one step), ``--rounds`` times; the table gives the median peak. Faster R-CNN is
also measured with Sampling-Free in the RPN only and in the RoI heads only. Weights are random
(no download).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "Faster R-CNN": {
        "baseline": "faster_rcnn_R_50_FPN_1x.py",
        "Sampling-Free": "faster_rcnn_sampling_free_R_50_FPN_1x.py",
        "Sampling-Free RPN only": "faster_rcnn_sampling_free_rpn_R_50_FPN_1x.py",
        "Sampling-Free RoI heads only": "faster_rcnn_sampling_free_roi_R_50_FPN_1x.py",
    },
    "Cascade R-CNN": {
        "baseline": "cascade_rcnn_R_50_FPN_1x.py",
        "Sampling-Free": "cascade_rcnn_sampling_free_R_50_FPN_1x.py",
    },
}


def build_model(config, device, post_nms_topk=None):
    import torch
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection", config))
    if cfg.model.proposal_generator.get("prior_prob") == "auto":
        cfg.model.proposal_generator.prior_prob = 0.01  # no training data here; same cost
    if post_nms_topk:
        cfg.model.proposal_generator.post_nms_topk = (post_nms_topk, 1000)
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    zero_box_deltas(model)
    return model


def zero_box_deltas(model, box_predictors=True):
    """
    Zeroes the RPN's and (``box_predictors``) every box predictor's delta layer (they still
    train: they get gradients). Random weights give exploding box deltas. In the RPN, the clipped, degenerate
    proposals get dropped: with zero deltas it returns its full post-NMS top-k, as a trained RPN
    does. In the cascade, stage 2 gets whole-image boxes (`python benchmarks/profile_step.py
    --config-file configs/COCO-Detection/cascade_rcnn_R_50_FPN_1x.py --synthetic 800 1333
    --zero-deltas rpn`), and ROIAlign with adaptive sampling (sampling_ratio=0) costs in
    proportion to the RoI area, so the step would time boxes no trained model produces. Zero
    deltas keep every stage on the proposals.
    """
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers
    from torch.nn.init import zeros_

    deltas = [model.proposal_generator.rpn_head.anchor_deltas]
    if box_predictors:
        deltas += [m.bbox_pred for m in model.modules() if isinstance(m, FastRCNNOutputLayers)]
    for layer in deltas:
        zeros_(layer.weight)
        zeros_(layer.bias)


def rois_per_image(logged):
    return logged["roi_head/num_fg_samples"] + logged["roi_head/num_bg_samples"]


def memory_worker(args):
    """Builds one model, runs one warm-up step and one step, prints its peak memory as JSON."""
    import torch
    from benchmark_detectors import make_batch, time_steps

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.worker, device, args.post_nms_topk)
    data = make_batch(args.height, args.width, device, max_box_fraction=0.25)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    logged = time_steps(model, data, 1, device)[1]
    result = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rois_per_image": rois_per_image(logged)}
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def paired_times(args, configs):
    """Per variant: step times and per-pair ratios against the baseline, stepping in turn."""
    import torch
    from benchmark_detectors import alternate, make_batch, one_step
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    data = make_batch(args.height, args.width, device, max_box_fraction=0.25)
    models = {name: build_model(config, device, args.post_nms_topk)
              for name, config in configs.items()}
    steps = {name: (lambda model=model: one_step(model, data, device))
             for name, model in models.items()}
    times, ratios = {"baseline": []}, {"baseline": [1.0]}
    with EventStorage():
        for step in steps.values():
            step()  # warm-up
        for name in configs:
            if name != "baseline":
                base, times[name], ratios[name] = alternate(
                    steps["baseline"], steps[name], args.pairs)
                times["baseline"] += base
    return times, ratios


def selected_variants(models, names=None):
    """{model: {variant: config}} for ``models``, the baseline and ``names`` (all if None)."""
    if names is not None:
        known = {name for model in models for name in VARIANTS[model]}
        unknown = sorted(set(names) - known)
        if unknown:
            raise SystemExit(f"--variants: unknown {unknown} for {models}; known: {sorted(known)}")
    return {model: {name: config for name, config in VARIANTS[model].items()
                    if names is None or name == "baseline" or name in names}
            for model in models}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="processes per memory figure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only these variants besides the baseline (e.g. Sampling-Free)")
    parser.add_argument("--post-nms-topk", type=int, default=None,
                        help="override the RPN's training post-NMS top-k per image")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return memory_worker(args)
    variants = selected_variants(args.models, args.variants)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    memory = {}
    for _ in range(args.rounds):
        for model, configs in variants.items():
            for name, config in configs.items():
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", config]
                for option in ("height", "width", "threads", "device", "post_nms_topk"):
                    if getattr(args, option) is not None:
                        cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
                memory.setdefault((model, name), []).append(
                    json.loads(out.stdout.strip().splitlines()[-1]))

    cuda = args.device == "cuda"
    mem_key = "cuda_max_allocated_mb" if cuda else "peak_rss_mb"
    print(f"One training step, R-50-FPN, one {args.height}x{args.width} image with 10 boxes, "
          f"{args.device}, {args.threads} threads. Time: {args.pairs} pairs of adjacent steps "
          f"(baseline, variant) in one process, after one warm-up step each. Memory: median "
          f"over {args.rounds} processes of one model each\n")
    mem_col = "CUDA max allocated MB" if cuda else "peak RSS MB"
    print(f"| model | sampling | RoIs / image | ms / step | x baseline (median of pairs) "
          f"| pair ratios min-max | {mem_col} | x baseline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, configs in variants.items():
        times, ratios = paired_times(args, configs)
        base_mem = statistics.median(r[mem_key] for r in memory[(model, "baseline")])
        for name in configs:
            mem = statistics.median(r[mem_key] for r in memory[(model, name)])
            print(f"| {model} | {name} | {memory[(model, name)][0]['rois_per_image']:.0f} "
                  f"| {1000 * statistics.median(times[name]):.0f} "
                  f"| {statistics.median(ratios[name]):.3f} "
                  f"| {min(ratios[name]):.3f}-{max(ratios[name]):.3f} "
                  f"| {mem:.0f} | {mem / base_mem:.3f} |")


if __name__ == "__main__":
    main()
