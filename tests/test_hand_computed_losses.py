"""Losses and inference checked against values computed by hand, in plain float64 torch on small
explicit tensors: ATSS (GIoU weighted by the centerness target, centerness target and BCE, focal
classification, and its inference rule), and the box-loss normalisers of the Sampling-Free RPN
and RoI box predictor."""
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator import StandardRPNHead
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO
from hpf.config import use_small_resnet_fpn
from hpf.modeling import SamplingFreeFastRCNNOutputLayers, SamplingFreeRPN
from hpf.modeling.atss import centerness_targets


# --- plain float64 reference formulas ----------------------------------------------------
def decode(anchor, delta, weights):
    """One box from an anchor and (dx, dy, dw, dh) divided by ``weights``."""
    w, h = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx, cy = anchor[0] + w / 2, anchor[1] + h / 2
    dx, dy, dw, dh = (d / wt for d, wt in zip(delta, weights))
    cx, cy, w, h = cx + dx * w, cy + dy * h, w * math.exp(dw), h * math.exp(dh)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def encode(box, target, weights):
    """(dx, dy, dw, dh) x ``weights`` taking ``box`` to ``target``."""
    w, h = box[2] - box[0], box[3] - box[1]
    tw, th = target[2] - target[0], target[3] - target[1]
    dx = (target[0] + tw / 2 - box[0] - w / 2) / w
    dy = (target[1] + th / 2 - box[1] - h / 2) / h
    return [weights[0] * dx, weights[1] * dy, weights[2] * math.log(tw / w),
            weights[3] * math.log(th / h)]


def giou_loss(p, g):
    inter_w = max(0.0, min(p[2], g[2]) - max(p[0], g[0]))
    inter = inter_w * max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
    union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    enclose = (max(p[2], g[2]) - min(p[0], g[0])) * (max(p[3], g[3]) - min(p[1], g[1]))
    return 1.0 - (inter / union - (enclose - union) / enclose)


def centerness(anchor, g):
    cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    l, t, r, b = cx - g[0], cy - g[1], g[2] - cx, g[3] - cy
    return math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def bce(x, t):
    return -(t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x)))


def focal(x, y, alpha=0.25, gamma=2.0):
    p_t = sigmoid(x) if y else 1 - sigmoid(x)
    return -(alpha if y else 1 - alpha) * (1 - p_t) ** gamma * math.log(p_t)


def smooth_l1(d, beta):
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


# --- ATSS --------------------------------------------------------------------------------
NUM_CLASSES = 2
# Two levels: four 16 px anchors and two 32 px anchors.
ANCHORS = [[[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]],
           [[0, 0, 32, 32], [32, 0, 64, 32]]]
ALL_ANCHORS = [a for level in ANCHORS for a in level]
# Per image, {anchor index: (class, matched ground-truth box)}; other anchors background.
POSITIVES = [
    {0: (0, [2.0, 3.0, 30.0, 25.0]), 2: (1, [1.0, 10.0, 20.0, 40.0]),
     4: (0, [2.0, 3.0, 30.0, 25.0])},
    {5: (1, [30.0, 4.0, 60.0, 28.0])},
]


@pytest.fixture(scope="module")
def atss():
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common", "models", "atss.py")).model
    use_small_resnet_fpn(cfg, widths=(8, 16, 32, 64), fpn_channels=32, head_convs=1)
    cfg.num_classes = NUM_CLASSES
    model = instantiate(cfg)
    assert model.box_loss_weight == 2.0 and model.centerness_loss_weight == 1.0
    assert model.normalizer_mode == "mean" and model.loss_balance is None
    return model


def test_atss_losses_equal_hand_computed_values(atss):
    """Two images, four positives: classification = focal loss summed over every anchor and
    class / positives; box = 2 x sum(GIoU loss x centerness target) / sum(centerness targets)
    on the boxes decoded with (10, 10, 5, 5); centerness = BCE against
    sqrt(min(l, r) / max(l, r) x min(t, b) / max(t, b)) over the positives / positives."""
    gen = torch.Generator().manual_seed(0)
    num_images, num_anchors = len(POSITIVES), len(ALL_ANCHORS)
    logits = torch.randn(num_images, num_anchors, NUM_CLASSES, generator=gen)
    deltas = torch.randn(num_images, num_anchors, 4, generator=gen) * 0.5
    ctr = torch.randn(num_images, num_anchors, 1, generator=gen)
    labels = torch.full((num_images, num_anchors), NUM_CLASSES)
    matched = torch.zeros(num_images, num_anchors, 4)
    for i, positives in enumerate(POSITIVES):
        for a, (c, box) in positives.items():
            labels[i, a] = c
            matched[i, a] = torch.tensor(box)

    num_pos = sum(len(p) for p in POSITIVES)
    cls = sum(focal(logits[i, a, c].item(), labels[i, a].item() == c)
              for i in range(num_images) for a in range(num_anchors) for c in range(NUM_CLASSES))
    box_sum = ctr_sum = ctr_bce = 0.0
    for i, positives in enumerate(POSITIVES):
        for a, (_, g) in positives.items():
            target = centerness(ALL_ANCHORS[a], g)
            pred = decode(ALL_ANCHORS[a], deltas[i, a].tolist(), (10.0, 10.0, 5.0, 5.0))
            box_sum += giou_loss(pred, g) * target
            ctr_sum += target
            ctr_bce += bce(ctr[i, a, 0].item(), target)
    expected = {"loss_cls": cls / num_pos, "loss_box_reg": 2.0 * box_sum / ctr_sum,
                "loss_centerness": ctr_bce / num_pos}

    anchors = [Boxes(torch.tensor(level, dtype=torch.float32)) for level in ANCHORS]
    sizes = [len(level) for level in ANCHORS]
    with EventStorage():
        losses = atss.losses(anchors, list(logits.split(sizes, 1)), list(labels),
                             list(deltas.split(sizes, 1)), list(matched), list(ctr.split(sizes, 1)))
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert value > 0
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name


def test_atss_centerness_target_of_a_centred_anchor_is_one():
    """The centerness target is 1 at the box centre and falls with the off-centre ratio."""
    anchors = torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 20.0, 20.0]])
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 60.0]])
    expected = [1.0, math.sqrt(10 / 30 * 10 / 50)]
    assert centerness_targets(anchors, gt).tolist() == pytest.approx(expected, rel=1e-6)


def _logit(p):
    return math.log(p / (1 - p))


def test_atss_inference_rule_by_hand(atss, monkeypatch):
    """Per level the top-k anchors by max_c sigmoid(cls) x sigmoid(ctr); their (anchor, class)
    pairs whose sigmoid(cls) passes the threshold (before the centerness product), scored
    sigmoid(cls) x sigmoid(ctr); class-wise NMS; the best ``max_detections_per_image``,
    clipped to the image."""
    monkeypatch.setattr(atss, "test_score_thresh", 0.3)
    monkeypatch.setattr(atss, "test_topk_candidates", 2)
    monkeypatch.setattr(atss, "test_nms_thresh", 0.5)
    monkeypatch.setattr(atss, "max_detections_per_image", 4)
    # (anchor box, (p_cls class 0, class 1), p_ctr); zero deltas: boxes are the anchors.
    level0 = [
        ([0, 0, 16, 16], (0.9, 0.1), 0.9),     # 0.81: kept
        ([40, 40, 56, 56], (0.35, 0.01), 0.8),  # 0.28 < 0.3, but cls 0.35 passes: kept
        ([16, 40, 32, 56], (0.95, 0.05), 0.1),  # best cls, product 0.095: not in the top 2
        ([40, 0, 56, 16], (0.05, 0.02), 0.5),   # 0.025: not in the top 2
    ]
    level1 = [
        ([0, 0, 18, 18], (0.6, 0.7), 0.8),      # c0 0.48: NMS'd by the first (IoU 0.79); c1 0.56
        ([60, 0, 92, 32], (0.5, 0.31), 0.6),    # c0 0.30 (clipped to x <= 80); c1 0.186: cut
        ([0, 32, 32, 64], (0.2, 0.1), 0.9),     # 0.18: not in the top 2
    ]
    anchors, logits, deltas, ctr = [], [], [], []
    for level in (level0, level1):
        anchors.append(Boxes(torch.tensor([b for b, _, _ in level], dtype=torch.float32)))
        logits.append(torch.tensor([[_logit(p) for p in ps] for _, ps, _ in level]))
        ctr.append(torch.tensor([[_logit(q)] for _, _, q in level]))
        deltas.append(torch.zeros(len(level), 4))
    result = atss.inference_single_image(anchors, logits, deltas, ctr, (64, 80))

    expected = [([0, 0, 16, 16], 0.9 * 0.9, 0), ([0, 0, 18, 18], 0.7 * 0.8, 1),
                ([60, 0, 80, 32], 0.5 * 0.6, 0), ([40, 40, 56, 56], 0.35 * 0.8, 0)]
    assert result.image_size == (64, 80) and len(result) == len(expected)
    assert result.pred_boxes.tensor.tolist() == [box for box, _, _ in expected]
    assert result.scores.tolist() == pytest.approx([s for _, s, _ in expected], rel=1e-5)
    assert result.pred_classes.tolist() == [c for _, _, c in expected]


# --- Sampling-Free RPN -------------------------------------------------------------------
RPN_ANCHORS = [[[0, 0, 16, 16], [8, 8, 24, 24], [32, 0, 48, 16]],
               [[0, 0, 32, 32], [16, 16, 48, 48]]]
# Per image: label per anchor (1 foreground, 0 background, -1 ignored) and matched box.
RPN_LABELS = [[1, 0, -1, 1, 0], [0, 1, 0, 0, 1]]
RPN_GT = [[[2, 1, 18, 15], [0, 0, 1, 1], [30, 2, 50, 20], [1, 2, 30, 35], [0, 0, 1, 1]],
          [[0, 0, 1, 1], [6, 9, 26, 22], [0, 0, 1, 1], [0, 0, 1, 1], [14, 12, 50, 44]]]


def sampling_free_rpn(**kwargs):
    return SamplingFreeRPN(
        in_features=["p2", "p3"],
        head=StandardRPNHead(in_channels=8, num_anchors=1),
        anchor_generator=DefaultAnchorGenerator(sizes=[[16], [32]], aspect_ratios=[1.0],
                                                strides=[4, 8]),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=256, positive_fraction=0.5, pre_nms_topk=(100, 100),
        post_nms_topk=(50, 50), prior_prob=0.01, **kwargs,
    )


@pytest.mark.parametrize("normalizer,beta,weight", [
    ("foreground", 0.0, 0.5), ("foreground", 1.0 / 9, 1.0), ("batch", 0.0, 1.0)])
def test_sampling_free_rpn_box_loss_normaliser(normalizer, beta, weight):
    """loss_rpn_loc = loss_weight x sum of smooth-L1 (beta) over the positive anchors'
    coordinates / (4 x positives) with "foreground", / (256 x images) with "batch";
    background and ignored anchors add nothing, whatever their deltas."""
    rpn = sampling_free_rpn(box_reg_normalizer=normalizer, smooth_l1_beta=beta,
                            loss_weight={"loss_rpn_cls": 1.0, "loss_rpn_loc": weight})
    gen = torch.Generator().manual_seed(1)
    all_anchors = [a for level in RPN_ANCHORS for a in level]
    deltas = torch.randn(2, len(all_anchors), 4, generator=gen) * 0.3
    labels = torch.tensor(RPN_LABELS)
    deltas[labels != 1] += 100.0  # must not count
    total = 0.0
    for i in range(2):
        for a, anchor in enumerate(all_anchors):
            if RPN_LABELS[i][a] == 1:
                target = encode(anchor, RPN_GT[i][a], (1.0, 1.0, 1.0, 1.0))
                total += sum(smooth_l1(d - t, beta) for d, t in zip(deltas[i, a].tolist(), target))
    num_pos = (labels == 1).sum().item()
    denominator = 4 * num_pos if normalizer == "foreground" else 256 * 2
    expected = weight * total / denominator

    sizes = [len(level) for level in RPN_ANCHORS]
    anchors = [Boxes(torch.tensor(level, dtype=torch.float32)) for level in RPN_ANCHORS]
    objectness = list(torch.randn(2, len(all_anchors), generator=gen).split(sizes, 1))
    with EventStorage():
        losses = rpn.losses(anchors, objectness, list(labels), list(deltas.split(sizes, 1)),
                            list(torch.tensor(RPN_GT, dtype=torch.float32)))
    assert losses["loss_rpn_loc"].item() == pytest.approx(expected, rel=1e-5)


def test_sampling_free_rpn_box_loss_without_positives_is_zero():
    """No positive anchor: the box loss is 0 (the count is clamped to 1), not nan."""
    rpn = sampling_free_rpn()
    anchors = [Boxes(torch.tensor(level, dtype=torch.float32)) for level in RPN_ANCHORS]
    labels = torch.tensor([[0, 0, -1, 0, 0], [0, 0, 0, 0, 0]])
    with EventStorage():
        losses = rpn.losses(anchors, [torch.zeros(2, 3), torch.zeros(2, 2)], list(labels),
                            [torch.ones(2, 3, 4), torch.ones(2, 2, 4)], list(torch.zeros(2, 5, 4)))
    assert losses["loss_rpn_loc"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())


# --- Sampling-Free Fast R-CNN box predictor -----------------------------------------------
ROI_CLASSES = 3
# Per image: (proposal, class (3 = background), ground-truth box).
ROIS = [
    [([10, 10, 40, 50], 2, [12, 8, 44, 47]), ([0, 0, 20, 20], 3, [0, 0, 20, 20]),
     ([30, 5, 70, 35], 0, [28, 9, 66, 40])],
    [([5, 5, 25, 45], 3, [5, 5, 25, 45]), ([50, 50, 90, 80], 1, [47, 52, 95, 84])],
]


@pytest.mark.parametrize("agnostic", [False, True], ids=["class_specific", "class_agnostic"])
@pytest.mark.parametrize("normalizer", ["foreground", "rois"])
def test_sampling_free_fast_rcnn_box_loss_normaliser(normalizer, agnostic):
    """loss_box_reg = sum of smooth-L1 (beta 1) over the foreground RoIs' deltas of their class
    (weights 10, 10, 5, 5) / (4 x foreground RoIs) with "foreground", / all RoIs with "rois";
    background RoIs and the deltas of other classes add nothing."""
    weights = (10.0, 10.0, 5.0, 5.0)
    predictor = SamplingFreeFastRCNNOutputLayers(
        ShapeSpec(channels=8), box2box_transform=Box2BoxTransform(weights=weights),
        num_classes=ROI_CLASSES, smooth_l1_beta=1.0, cls_agnostic_bbox_reg=agnostic,
        box_reg_normalizer=normalizer,
    )
    gen = torch.Generator().manual_seed(2)
    rois = [r for image in ROIS for r in image]
    per_roi = 1 if agnostic else ROI_CLASSES
    deltas = torch.randn(len(rois), per_roi, 4, generator=gen) + 50.0  # must not count ...
    total = 0.0
    for k, (proposal, c, gt) in enumerate(rois):
        if c == ROI_CLASSES:
            continue
        j = 0 if agnostic else c
        deltas[k, j] = torch.randn(4, generator=gen) * 2  # ... except these
        target = encode(proposal, gt, weights)
        total += sum(smooth_l1(d - t, 1.0) for d, t in zip(deltas[k, j].tolist(), target))
    num_fg = sum(c < ROI_CLASSES for _, c, _ in rois)
    expected = total / (4 * num_fg if normalizer == "foreground" else len(rois))

    proposals = [
        Instances((100, 100), gt_classes=torch.tensor([c for _, c, _ in image]),
                  proposal_boxes=Boxes(torch.tensor([p for p, _, _ in image], dtype=torch.float32)),
                  gt_boxes=Boxes(torch.tensor([g for _, _, g in image], dtype=torch.float32)))
        for image in ROIS
    ]
    scores = torch.randn(len(rois), ROI_CLASSES + 1, generator=gen)
    with EventStorage():
        losses = predictor.losses((scores, deltas.flatten(1)), proposals)
    assert losses["loss_box_reg"].item() == pytest.approx(expected, rel=1e-5)
