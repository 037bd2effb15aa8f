#!/usr/bin/env python
"""
One training step (forward + backward) of Faster R-CNN R-50-FPN and Cascade R-CNN R-50-FPN
with Sampling-Free against the biased-sampling baseline, on the same image: time and peak
memory (CPU: the process's peak RSS; CUDA: max allocated) as ratios to the baseline measured
in the same run.

    python tools/benchmark_rcnn.py [--height 800 --width 1333] [--reps 3] [--rounds 2]
                                   [--threads 2] [--device cpu]

Every (model, variant) runs in its own process, so that each peak memory is its own; the
processes alternate baseline / Sampling-Free for ``--rounds`` rounds, and the table gives the
median over rounds of each process's median step time. Weights are random (no download).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    ("Faster R-CNN", "baseline"): "faster_rcnn_R_50_FPN_1x.py",
    ("Faster R-CNN", "Sampling-Free"): "faster_rcnn_sampling_free_R_50_FPN_1x.py",
    ("Cascade R-CNN", "baseline"): "cascade_rcnn_R_50_FPN_1x.py",
    ("Cascade R-CNN", "Sampling-Free"): "cascade_rcnn_sampling_free_R_50_FPN_1x.py",
}


def make_batch(height, width, device, num_boxes=10, seed=0):
    import torch
    from detectron2.structures import Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    inst = Instances((height, width))
    size = torch.tensor([width, height], dtype=torch.float32)
    xy = torch.rand(num_boxes, 2, generator=gen) * size * 0.7
    wh = torch.rand(num_boxes, 2, generator=gen) * size * 0.25 + 16
    inst.gt_boxes = Boxes(torch.cat([xy, torch.minimum(xy + wh, size - 1)], 1))
    inst.gt_classes = torch.randint(0, 80, (num_boxes,), generator=gen)
    image = torch.randint(0, 255, (3, height, width), generator=gen).to(torch.uint8)
    return [{"image": image.to(device), "instances": inst.to(device)}]


def worker(args):
    """Builds one model, times ``reps`` steps after one warm-up, prints a JSON line."""
    import torch
    from benchmark_detectors import time_steps
    from detectron2.config import LazyConfig, instantiate

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection", args.worker))
    if cfg.model.proposal_generator.get("prior_prob") == "auto":
        cfg.model.proposal_generator.prior_prob = 0.01  # no training data here; same cost
    if args.post_nms_topk:
        cfg.model.proposal_generator.post_nms_topk = (args.post_nms_topk, 1000)
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    # Random weights give exploding box deltas, and the clipped, degenerate proposals get
    # dropped: with zero deltas the RPN returns its full post-NMS top-k (1000; cascade 2000 per
    # image), as a trained RPN does. The layer still trains (it gets gradients).
    torch.nn.init.zeros_(model.proposal_generator.rpn_head.anchor_deltas.weight)
    torch.nn.init.zeros_(model.proposal_generator.rpn_head.anchor_deltas.bias)
    data = make_batch(args.height, args.width, device)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step, logged = time_steps(model, data, args.reps, device)
    result = {
        "step_s": step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_steps_mb": rss_model / 1024,
        "rois_per_image": logged["roi_head/num_fg_samples"] + logged["roi_head/num_bg_samples"],
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--models", nargs="+", default=["Faster R-CNN", "Cascade R-CNN"],
                        choices=["Faster R-CNN", "Cascade R-CNN"])
    parser.add_argument("--post-nms-topk", type=int, default=None,
                        help="override the RPN's training post-NMS top-k per image")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    runs = {key: [] for key in CONFIGS if key[0] in args.models}
    for _ in range(args.rounds):
        for key, config in CONFIGS.items():
            if key[0] not in args.models:
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", config]
            for name in ("height", "width", "reps", "threads", "device"):
                cmd += [f"--{name}", str(getattr(args, name))]
            if args.post_nms_topk:
                cmd += ["--post-nms-topk", str(args.post_nms_topk)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
            runs[key].append(json.loads(out.stdout.strip().splitlines()[-1]))

    cuda = args.device == "cuda"
    print(f"One training step, R-50-FPN, one {args.height}x{args.width} image with 10 boxes, "
          f"{args.device}, {args.threads} threads; median over {args.rounds} processes of the "
          f"median of {args.reps} steps (after one warm-up)\n")
    mem_col = "CUDA max allocated MB" if cuda else "peak RSS MB"
    print(f"| model | sampling | RoIs / image | ms / step | x baseline | {mem_col} | x baseline |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model in args.models:
        base = None
        for variant in ("baseline", "Sampling-Free"):
            results = runs[(model, variant)]
            step = statistics.median(r["step_s"] for r in results)
            mem = statistics.median(
                r["cuda_max_allocated_mb"] if cuda else r["peak_rss_mb"] for r in results)
            if base is None:
                base = (step, mem)
            print(f"| {model} | {variant} | {results[0]['rois_per_image']:.0f} | {1000 * step:.0f} "
                  f"| {step / base[0]:.3f} | {mem:.0f} | {mem / base[1]:.3f} |")


if __name__ == "__main__":
    main()
