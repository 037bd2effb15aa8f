#!/usr/bin/env python
"""
Whether two Faster R-CNN runs' RoI heads differ in scoring the boxes or in placing them: on the
same proposals, the class scores of every run combined with the regressed boxes of every run, a
grid of box AP (rows: whose scores; columns: whose boxes).

    python tools/analysis/swap_scores_boxes.py RUN_DIR_A RUN_DIR_B [RUN_DIR ...] \\
        [--proposals-of 0] [--topk 1000]

Each run is rebuilt from its ``config.yaml`` and ``model_final.pth`` (eval mode, CPU). Per test
image, the RPN of run ``--proposals-of`` (an index into the runs, default the first) gives the
proposals; every run's box head, on its own backbone's features, gives class probabilities and
class-specific boxes for each of them. Each (scores, boxes) pair then goes through detectron2's
``fast_rcnn_inference`` (score threshold, NMS and detections per image of the run whose scores
are used) and the model's post-processing; AP as in ``tools/analysis/swap_proposals.py``. The cell of a
run's own scores and boxes on its own proposals is its ordinary inference.

Single-stage RoI heads only (``StandardROIHeads``: Faster / Mask R-CNN boxes); a cascade's
stages refine each other's boxes, so they have no one pair to swap.
"""
import argparse
import os
import sys

import torch

# Sibling scripts (the script's folder is on sys.path when it runs as a script).
from proposal_recall import run_rpn
from swap_proposals import (
    check_same_sizes, evaluate_grid, load_runs, postprocess, print_grid)


def check_single_stage(run, model):
    from detectron2.modeling.roi_heads import CascadeROIHeads

    heads = model.roi_heads
    if isinstance(heads, CascadeROIHeads) or not hasattr(heads, "box_predictor"):
        raise ValueError(f"{run}: {type(heads).__name__} is not single-stage RoI heads "
                         "(StandardROIHeads); scores and boxes cannot be swapped")


@torch.no_grad()
def box_head_outputs(model, features, proposals):
    """(per-image class probabilities, per-image boxes) of the model's box head on the given
    proposals, pooled from its backbone's ``features`` (preprocessed image coordinates)."""
    heads = model.roi_heads
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features],
                              [p.proposal_boxes for p in proposals])
    predictions = heads.box_predictor(heads.box_head(pooled))
    return (heads.box_predictor.predict_probs(predictions, proposals),
            heads.box_predictor.predict_boxes(predictions, proposals))


@torch.no_grad()
def swapped_detections(models, batch, proposals_of=0, topk=None):
    """{(scores run index, boxes run index): post-processed ``Instances`` per image}."""
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    images, features, proposals = [], [], None
    for i, model in enumerate(models):
        if i == proposals_of:
            im, feats, proposals = run_rpn(model, batch, topk)
        else:
            im = model.preprocess_image(batch)
            feats = model.backbone(im.tensor)
        images.append(im)
        features.append(feats)
    check_same_sizes([im.image_sizes for im in images])
    image_sizes = images[proposals_of].image_sizes
    outputs = [box_head_outputs(m, f, proposals) for m, f in zip(models, features)]
    grid = {}
    for s, model in enumerate(models):
        predictor = model.roi_heads.box_predictor
        for b, (_, boxes) in enumerate(outputs):
            results, _ = fast_rcnn_inference(
                boxes, outputs[s][0], image_sizes, predictor.test_score_thresh,
                predictor.test_nms_thresh, predictor.test_topk_per_image)
            grid[s, b] = postprocess(results, batch, image_sizes)
    return grid


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output directories of train_net.py (Faster R-CNN)")
    parser.add_argument("--proposals-of", type=int, default=0,
                        help="index of the run whose RPN gives the proposals (default 0)")
    parser.add_argument("--topk", type=int, default=None,
                        help="proposals per image (default: all the RPN returns at test time)")
    args = parser.parse_args(argv)
    if not 0 <= args.proposals_of < len(args.runs):
        parser.error(f"--proposals-of must index the {len(args.runs)} runs, "
                     f"got {args.proposals_of}")
    if args.topk is not None and args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    torch.set_flush_denormal(True)
    cfg, models = load_runs(args.runs)
    for run, model in zip(args.runs, models):
        check_single_stage(run, model)
    table = evaluate_grid(cfg, models, lambda ms, batch: swapped_detections(
        ms, batch, args.proposals_of, args.topk))
    print(f"Proposals of {os.path.basename(os.path.normpath(args.runs[args.proposals_of]))}.")
    print_grid(table, args.runs, "scores of", "boxes of")
    return 0


if __name__ == "__main__":
    sys.exit(main())
