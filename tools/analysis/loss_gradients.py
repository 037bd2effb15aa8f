#!/usr/bin/env python
"""
Which loss pulls on which part of finished R-CNN runs: for every term of the model's training
loss dict (``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``, ...), the norm of its
gradient with respect to the parameters of each part of the detector, a markdown table per run.

    python tools/analysis/loss_gradients.py RUN_DIR [RUN_DIR ...] [--images 64]

Each run is rebuilt from its ``config.yaml`` and ``model_final.pth`` (or ``--checkpoint``, e.g.
``model_0000599.pth``) in training mode (CPU) and fed the first ``--images`` images of its
training set, through its training mapper, in batches of its training batch size (the same
images and flips for every run: seeded). A cell is the L2 norm of d(loss term) / d(parameters of
the part) for one batch, as the trainer would back-propagate it (guided scales included),
averaged over the batches. Parts: the backbone's bottom-up network, the FPN, the RPN head, and
per RoI stage the box head (the FC layers shared by classification and regression), the
classifier and the box regressor. Below each table: the RoIs that train the (first) RoI stage
on these images, and how well the foreground ones overlap their ground truth.

Norms are not an optimizer's step (AdamW divides each parameter's step by the running size of
its own gradient), but within one part they say which loss dominates the sum it trains on.
"""
import argparse
import contextlib
import os
import random
import sys

import numpy as np
import torch

# Sibling scripts (the script's folder is on sys.path when it runs as a script).
from proposal_recall import load_run


def part_of(parameter_name):
    """The part of an R-CNN a parameter belongs to ("backbone", "fpn", "rpn head",
    "box head", "classifier", "box regressor"; cascade stages suffixed " k")."""
    names = parameter_name.split(".")
    if names[0] == "backbone":
        return "backbone" if names[1] == "bottom_up" else "fpn"
    if names[0] == "proposal_generator":
        return "rpn head"
    if names[0] == "roi_heads" and names[1] in ("box_head", "box_predictor"):
        stage = f" {names[2]}" if names[2].isdigit() else ""
        if names[1] == "box_head":
            return "box head" + stage
        layer = names[3] if stage else names[2]
        return {"cls_score": "classifier", "bbox_pred": "box regressor"}.get(layer, layer) + stage
    return ".".join(names[:2])


def gradient_norms(model, batch):
    """{loss name: {part: gradient norm}} of one training batch."""
    from detectron2.utils.events import EventStorage

    parts = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            parts.setdefault(part_of(name), []).append(param)
    with EventStorage():
        losses = model(batch)
    norms = {}
    for loss_name, loss in losses.items():
        norms[loss_name] = {}
        for part, params in parts.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            squares = [g.pow(2).sum() for g in grads if g is not None]
            norms[loss_name][part] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def training_batches(cfg, num_images):
    """The first ``num_images`` training images through the training mapper, in batches of the
    training batch size; seeded, so every run gets the same images and flips."""
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog
    import hpf.data  # noqa: F401  (registers the shapes dataset)

    names = cfg.dataloader.train.dataset.names
    records = [r for name in ([names] if isinstance(names, str) else names)
               for r in DatasetCatalog.get(name)][:num_images]
    mapper = instantiate(cfg.dataloader.train.mapper)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    batch_size = cfg.dataloader.train.total_batch_size
    mapped = [mapper(dict(r)) for r in records]
    return [mapped[i:i + batch_size] for i in range(0, len(mapped), batch_size)]


@contextlib.contextmanager
def recording_rois(model):
    """Yields a list that gets the RoIs of every training forward inside the block: the labelled
    and sampled proposals of the (first stage of the) RoI heads, as they train on them."""
    heads = model.roi_heads
    sample = heads.label_and_sample_proposals
    recorded = []

    def recording(*args, **kwargs):
        recorded.append(sample(*args, **kwargs))
        return recorded[-1]

    heads.label_and_sample_proposals = recording
    try:
        yield recorded
    finally:
        del heads.label_and_sample_proposals  # back to the class's method


def roi_statistics(rois, num_classes):
    """(RoIs, IoU of each foreground RoI with its ground-truth box) of one batch's RoIs."""
    from detectron2.structures.boxes import matched_pairwise_iou

    foreground = [r[(r.gt_classes >= 0) & (r.gt_classes < num_classes)] for r in rois]
    ious = [matched_pairwise_iou(r.proposal_boxes, r.gt_boxes) for r in foreground]
    return sum(len(r) for r in rois), torch.cat(ious)


def measure_run(run_dir, num_images, checkpoint="model_final.pth"):
    """({loss: {part: gradient norm averaged over batches}}, RoI statistics of the images)."""
    cfg, model = load_run(run_dir, checkpoint)
    model.train()
    per_batch, num_rois, ious = [], 0, []
    batches = training_batches(cfg, num_images)
    for batch in batches:
        torch.manual_seed(0)  # the samplers of a baseline draw the same way for every run
        with recording_rois(model) as recorded:
            per_batch.append(gradient_norms(model, batch))
        batch_rois, batch_ious = roi_statistics(recorded[0], model.roi_heads.num_classes)
        num_rois += batch_rois
        ious.append(batch_ious)
    norms = {loss: {part: float(np.mean([b[loss][part] for b in per_batch]))
                    for part in per_batch[0][loss]} for loss in per_batch[0]}
    return norms, roi_summary(num_rois, torch.cat(ious), sum(len(b) for b in batches))


def roi_summary(num_rois, ious, num_images):
    return (f"RoIs training the first RoI stage: {num_rois / num_images:.1f} per image, "
            f"{ious.numel() / num_images:.1f} foreground; IoU of the foreground with their "
            f"ground truth: mean {ious.mean():.3f}, >= 0.8: {(ious >= 0.8).float().mean():.2f}, "
            f">= 0.9: {(ious >= 0.9).float().mean():.2f}")


def print_run(run_dir, checkpoint, norms, summary):
    parts = list(next(iter(norms.values())))
    print(f"\n{os.path.basename(os.path.normpath(run_dir))}, {checkpoint}\n")
    print("| loss | " + " | ".join(parts) + " |")
    print("|---|" + "---:|" * len(parts))
    for loss, row in norms.items():
        print(f"| {loss} | " + " | ".join(f"{row[p]:.3g}" for p in parts) + " |")
    print(f"\n{summary}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py (R-CNNs)")
    parser.add_argument("--images", type=int, default=64,
                        help="training images to average over (default 64)")
    parser.add_argument("--checkpoint", default="model_final.pth",
                        help="checkpoint file of each run to load (default model_final.pth)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    torch.set_flush_denormal(True)
    for run in args.runs:
        print_run(run, args.checkpoint, *measure_run(run, args.images, args.checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
