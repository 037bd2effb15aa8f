#!/usr/bin/env python
"""
Which half of a two-stage detector makes two runs differ: the RoI heads of every run evaluated
on the proposals of every run, a grid of box AP (rows: whose proposals; columns: whose RoI heads).

    python tools/analysis/swap_proposals.py RUN_DIR_A RUN_DIR_B [RUN_DIR ...] [--topk 1000]

Each run is rebuilt from its ``config.yaml`` and ``model_final.pth`` (eval mode, CPU). Per test
image, each run's backbone computes its features and its RPN its proposals (after NMS, in the
RPN's order; ``--topk`` keeps the first k). The RoI heads of each run then box and classify the
proposals of each run on their own run's features, and the detections are post-processed as the
model does. AP is COCO's (pycocotools, all areas, 100 detections per image) against the test
set's json. A run's own cell (proposals and RoI heads of the same run) is its model's ordinary
inference, so with the RPN's full top-k it reproduces the run's evaluation.

The runs must share the test set and its resizing: the proposals of one run are used, unscaled,
in the image coordinates of another.
"""
import argparse
import contextlib
import io
import os
import sys

import torch

# Sibling scripts (the script's folder is on sys.path when it runs as a script).
from ap_per_iou import ap_per_iou
from proposal_recall import load_run, run_rpn

# The columns of the grid: overall AP and AP at three IoU thresholds (index into 0.50:0.05:0.95).
COLUMNS = {"AP50": 0, "AP75": 5, "AP90": 8}


def check_same_test_set(configs):
    """Raises ValueError unless every run's config has the same test dataset and resizing."""
    def test_setup(cfg):
        test = cfg.dataloader.test
        return str(test.dataset.names), str(test.mapper.augmentations)

    first = test_setup(configs[0][1])
    for run, cfg in configs[1:]:
        if test_setup(cfg) != first:
            raise ValueError(
                f"{run}: its test set or resizing {test_setup(cfg)} differs from "
                f"{configs[0][0]}'s {first}; proposals cannot be swapped between them"
            )


def check_same_sizes(image_sizes):
    """Raises ValueError unless every run resized the batch's images alike."""
    for sizes in image_sizes[1:]:
        if list(sizes) != list(image_sizes[0]):
            raise ValueError(f"The runs resize the test images differently: "
                             f"{image_sizes[0]} vs {sizes}")


def postprocess(results, batch, image_sizes):
    """Detections of the preprocessed images rescaled to the inputs' sizes, as the model does."""
    from detectron2.modeling import GeneralizedRCNN

    return [out["instances"].to("cpu")
            for out in GeneralizedRCNN._postprocess(results, batch, image_sizes)]


@torch.no_grad()
def swapped_detections(models, batch, topk=None):
    """{(proposal run index, RoI-head run index): post-processed ``Instances`` per image}."""
    outputs = [run_rpn(model, batch, topk) for model in models]
    check_same_sizes([images.image_sizes for images, _, _ in outputs])
    grid = {}
    for p, (_, _, proposals) in enumerate(outputs):
        for r, (model, (images, features, _)) in enumerate(zip(models, outputs)):
            results, _ = model.roi_heads(images, features, proposals, None)
            grid[p, r] = postprocess(results, batch, images.image_sizes)
    return grid


def coco_results(instances, image_id, dataset_id_of):
    """COCO-format detections of one image, categories mapped back to the json's ids."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    results = instances_to_coco_json(instances, image_id)
    for r in results:
        r["category_id"] = dataset_id_of[r["category_id"]]
    return results


def grid_aps(results, gt):
    """{cell: {"AP": ..., "AP50": ..., ...}} in %, from {cell: COCO-format detections}."""
    table = {}
    for cell, dets in results.items():
        if not dets:
            table[cell] = {name: 0.0 for name in ["AP", *COLUMNS]}
            continue
        _, aps = ap_per_iou(gt, dets)
        table[cell] = {"AP": sum(aps) / len(aps), **{k: aps[i] for k, i in COLUMNS.items()}}
    return table


def load_runs(runs):
    """(config of the first run, models) of finished runs that share their test set."""
    loaded = [load_run(run) for run in runs]
    check_same_test_set([(run, cfg) for run, (cfg, _) in zip(runs, loaded)])
    return loaded[0][0], [model for _, model in loaded]


def evaluate_grid(cfg, models, detect):
    """{cell: AP, AP50, ...} over the config's test set, where ``detect(models, batch)`` gives
    {cell: post-processed ``Instances`` per image of the batch}."""
    from detectron2.config import instantiate
    from detectron2.data import MetadataCatalog
    from pycocotools.coco import COCO
    import hpf.data  # noqa: F401  (registers the shapes dataset)

    names = cfg.dataloader.test.dataset.names
    metadata = MetadataCatalog.get(names if isinstance(names, str) else names[0])
    dataset_id_of = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    cells = [(i, j) for i in range(len(models)) for j in range(len(models))]
    results = {cell: [] for cell in cells}
    for batch in instantiate(cfg.dataloader.test):
        for cell, per_image in detect(models, batch).items():
            for inputs, instances in zip(batch, per_image):
                results[cell].extend(coco_results(instances, inputs["image_id"], dataset_id_of))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(metadata.json_file)
    return grid_aps(results, gt)


def print_grid(table, runs, row_label, column_label):
    names = [os.path.basename(os.path.normpath(run)) for run in runs]
    print(f"| {row_label} | {column_label} | AP | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---:|" + "---:|" * len(COLUMNS))
    for (i, j), aps in table.items():
        cells = " | ".join(f"{aps[k]:.1f}" for k in ["AP", *COLUMNS])
        print(f"| {names[i]} | {names[j]} | {cells} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py (R-CNNs)")
    parser.add_argument("--topk", type=int, default=None,
                        help="proposals per image (default: all the RPN returns at test time)")
    args = parser.parse_args(argv)
    if args.topk is not None and args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    torch.set_flush_denormal(True)
    cfg, models = load_runs(args.runs)
    table = evaluate_grid(cfg, models, lambda ms, batch: swapped_detections(ms, batch, args.topk))
    print_grid(table, args.runs, "proposals of", "RoI heads of")
    return 0


if __name__ == "__main__":
    sys.exit(main())
