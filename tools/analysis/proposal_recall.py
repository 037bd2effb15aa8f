#!/usr/bin/env python
"""
How well the RPN of finished R-CNN runs places its proposals: for every ground-truth box of the
test set, the best IoU among the top-k proposals; printed as the mean best IoU and the recall at
several IoU thresholds, a markdown row per run and top-k.

    python tools/analysis/proposal_recall.py RUN_DIR [RUN_DIR ...] [--topk 100 1000]
        [--thresholds 0.5 0.7 0.8 0.9]

Each run is rebuilt from its ``config.yaml`` and ``model_final.pth`` and run (eval mode, CPU)
on its config's test set; proposals are taken in the order the RPN ranks them (after NMS) and
scaled back to the original image size, where the ground truth lives. Crowd regions are not
ground-truth boxes here (as in COCO's evaluation).

detectron2's COCOEvaluator has a proposal recall of its own (``_evaluate_box_proposals``,
private, for proposal-only models); it matches proposals to boxes one-to-one, greedily, which
measures something else than the best IoU each box gets.
"""
import argparse
import os
import sys

import torch


def best_iou_per_gt(proposal_boxes, gt_boxes):
    """Per ground-truth box (``Boxes``), the highest IoU with any proposal (0 without any)."""
    from detectron2.structures import pairwise_iou

    if len(gt_boxes) == 0:
        return torch.zeros(0)
    if len(proposal_boxes) == 0:
        return torch.zeros(len(gt_boxes))
    return pairwise_iou(gt_boxes, proposal_boxes).max(dim=1).values


def summarize(best_ious, thresholds):
    """(mean best IoU, [recall at each threshold]) over all ground-truth boxes."""
    if best_ious.numel() == 0:
        raise ValueError("No ground-truth boxes in the test set: nothing to measure")
    return float(best_ious.mean()), [float((best_ious >= t).float().mean()) for t in thresholds]


def gt_boxes(record):
    """The non-crowd ground-truth boxes of a dataset dict, as XYXY ``Boxes``."""
    from detectron2.structures import BoxMode, Boxes

    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    return Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))


@torch.no_grad()
def run_rpn(model, batch, topk=None):
    """(preprocessed images, backbone features, proposals: the RPN's first ``topk`` per image,
    in the order it ranks them after NMS)."""
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    return images, features, [p[:topk] for p in proposals] if topk else proposals


def load_run(run_dir, checkpoint="model_final.pth"):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    for name in ("config.yaml", checkpoint):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"No {os.path.join(run_dir, name)}: has the run finished?")
    cfg = LazyConfig.load(os.path.join(run_dir, "config.yaml"))
    model = instantiate(cfg.model).eval()
    if getattr(model, "proposal_generator", None) is None:
        raise ValueError(f"{run_dir}: the model has no proposal generator (not an R-CNN)")
    DetectionCheckpointer(model).load(os.path.join(run_dir, checkpoint))
    return cfg, model


@torch.no_grad()
def best_ious_of_run(run_dir, topks):
    """{top-k: best IoU of every ground-truth box of the run's test set}."""
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog
    import hpf.data  # noqa: F401  (registers the shapes dataset)

    cfg, model = load_run(run_dir)
    names = cfg.dataloader.test.dataset.names
    dicts = {}
    for name in [names] if isinstance(names, str) else names:
        dicts.update({d["image_id"]: d for d in DatasetCatalog.get(name)})
    best = {k: [] for k in topks}
    for batch in instantiate(cfg.dataloader.test):
        images, _, proposals = run_rpn(model, batch)
        for inputs, props, (h, w) in zip(batch, proposals, images.image_sizes):
            gt = gt_boxes(dicts[inputs["image_id"]])
            boxes = props.proposal_boxes.clone()
            boxes.scale(inputs["width"] / w, inputs["height"] / h)
            for k in topks:
                best[k].append(best_iou_per_gt(boxes[:k], gt))
    return {k: torch.cat(v) for k, v in best.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py")
    parser.add_argument("--topk", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    print("| run | top-k | GT boxes | mean best IoU | "
          + " | ".join(f"recall@{t:g}" for t in args.thresholds) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(args.thresholds))
    for run in args.runs:
        name = os.path.basename(os.path.normpath(run))
        for k, ious in best_ious_of_run(run, args.topk).items():
            mean, recalls = summarize(ious, args.thresholds)
            cells = " | ".join(f"{r:.3f}" for r in recalls)
            print(f"| {name} | {k} | {ious.numel()} | {mean:.3f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
