"""TOOD: the T-head's outputs, the task-aligned assignment against a plain loop, the normalised
alignment targets by hand, the ATSS -> TAL switch, the logit of the aligned score, one training
step of each TOOD config and a short run on shapes images whose loss decreases."""
import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf

from conftest import REPO, synthetic_batch
from hpf.config import use_small_resnet_fpn
from hpf.losses import (
    FocalLoss,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    QualityFocalLoss,
)
from hpf.modeling.task_aligned_assigner import TaskAlignedMatcher, normalized_alignment_targets
from hpf.modeling.tood import TaskDecomposition, TOODHead, combined_score_logit

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 3
CONFIGS = {
    "coco": "COCO-Detection/tood_R_50_FPN_1x.py",
    "coco_hpf": "COCO-Detection/tood_hpf_R_50_FPN_1x.py",
    "shapes": "Shapes/tood_R18h_FPN_qfl.py",
    "shapes_hpf": "Shapes/tood_R18h_FPN_hpf.py",
}


def tiny_model(config="coco", initial_iters=None, num_classes=NUM_CLASSES):
    cfg = LazyConfig.load(os.path.join(REPO, "configs", CONFIGS[config])).model
    use_small_resnet_fpn(cfg, widths=(8, 16, 32, 64), fpn_channels=64, head_convs=1)
    cfg.num_classes = num_classes
    cfg.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    if initial_iters is not None:
        cfg.initial_iters = initial_iters
    torch.manual_seed(0)
    model = instantiate(cfg)
    model.train()
    return model


# --- head ------------------------------------------------------------------------------
def test_head_output_shapes_and_initial_boxes():
    torch.manual_seed(0)
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    head = TOODHead(input_shape=[ShapeSpec(channels=32)] * 5, num_classes=NUM_CLASSES,
                    conv_dims=[32, 32], norm="GN", prior_prob=0.01)
    cls_logits, prob_logits, boxes = head([torch.randn(2, 32, h, w) for h, w in sizes])
    for (h, w), c, p, b in zip(sizes, cls_logits, prob_logits, boxes):
        assert c.shape == (2, NUM_CLASSES, h, w)
        assert p.shape == (2, 1, h, w)
        assert b.shape == (2, 4, h, w)
    # At initialisation distances are exp(~0) = ~1 stride and the offsets ~0: each box is about
    # (x - 1, y - 1, x + 1, y + 1) around its location (x, y) (stride units, offset 0).
    b = boxes[0][0]
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    expected = torch.stack([xs - 1, ys - 1, xs + 1, ys + 1])
    assert torch.allclose(b, expected, atol=0.5)
    # The score starts at the prior: sqrt(0.01 * 0.01).
    score = combined_score_logit(cls_logits[0], prob_logits[0]).sigmoid()
    assert score.mean().item() == pytest.approx(0.01, rel=0.2)


def test_task_decomposition_is_a_conv_of_the_attention_weighted_stack():
    """TOOD Eq. 2-3: the per-image scaled conv weight equals a 1x1 conv of the stack whose k-th
    feature is multiplied by the k-th layer attention, then GN and ReLU."""
    torch.manual_seed(0)
    decomposition = TaskDecomposition(32, 3, "GN")
    for m in decomposition.layer_attention:  # attention weights that differ between layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.5)
    stacked = torch.randn(2, 96, 5, 6)
    pooled = stacked.mean((2, 3), keepdim=True)
    out = decomposition(stacked, pooled)
    attention = decomposition.layer_attention(pooled).view(2, 3, 1, 1, 1)
    assert attention.std() > 0.05
    weighted = (stacked.view(2, 3, 32, 5, 6) * attention).view(2, 96, 5, 6)
    reduced = torch.nn.functional.conv2d(weighted, decomposition.reduction.weight)
    expected = torch.relu(decomposition.norm(reduced))
    assert torch.allclose(out, expected, atol=1e-5)


def test_box_resampling_takes_y_then_x_offsets_per_coordinate():
    boxes = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).view(2, 4, 3, 5)
    offsets = torch.zeros(2, 8, 3, 5)
    assert torch.equal(TOODHead._resample(boxes, offsets), boxes)
    offsets[:, 1] = 1.0  # coordinate 0: one column to the right (x offset)
    offsets[:, 4] = -1.0  # coordinate 2: one row up (y offset)
    out = TOODHead._resample(boxes, offsets)
    assert torch.equal(out[:, 0, :, :-1], boxes[:, 0, :, 1:])
    assert (out[:, 0, :, -1] == 0).all()  # outside the map: zero, as the reference
    assert torch.equal(out[:, 2, 1:], boxes[:, 2, :-1])
    assert torch.equal(out[:, [1, 3]], boxes[:, [1, 3]])
    offsets[:, 1] = 0.5  # half way: the mean of the two columns
    out = TOODHead._resample(boxes, offsets)
    assert torch.allclose(out[:, 0, :, :-1], (boxes[:, 0, :, 1:] + boxes[:, 0, :, :-1]) / 2)


def test_head_rejects_unequal_conv_dims():
    with pytest.raises(ValueError, match="conv_dims must be non-empty with equal entries"):
        TOODHead(input_shape=[ShapeSpec(channels=16)] * 2, num_classes=2, conv_dims=[16, 8])


# --- assignment ------------------------------------------------------------------------
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    if inter == 0:
        return 0.0
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def loop_reference(anchors, scores, boxes, gts, classes, topk, alpha=1.0, beta=6.0, margin=0.01):
    """Task-aligned assignment with plain Python loops: (matched gt per anchor, metric, IoU)."""
    anchors, scores, boxes, gts = (x.tolist() for x in (anchors, scores, boxes, gts))
    classes = classes.tolist()
    num_anchors = len(anchors)
    metric = [[scores[i][classes[g]] ** alpha * _iou(boxes[i], gts[g]) ** beta
               for i in range(num_anchors)] for g in range(len(gts))]
    claims = [[] for _ in range(num_anchors)]
    for g, gt in enumerate(gts):
        for i in sorted(range(num_anchors), key=lambda i: -metric[g][i])[:topk]:
            cx, cy = (anchors[i][0] + anchors[i][2]) / 2, (anchors[i][1] + anchors[i][3]) / 2
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > margin
            if metric[g][i] > 0 and inside:
                claims[i].append(g)
    matched, metrics, ious = [-1] * num_anchors, [0.0] * num_anchors, [0.0] * num_anchors
    for i, gs in enumerate(claims):
        best = None
        for g in sorted(gs):  # highest IoU; the lowest index among equal IoUs
            if best is None or _iou(boxes[i], gts[g]) > _iou(boxes[i], gts[best]):
                best = g
        if best is not None:
            matched[i], metrics[i], ious[i] = best, metric[best][i], _iou(boxes[i], gts[best])
    return matched, metrics, ious


def _around(centres, half=1.0):
    c = torch.tensor(centres, dtype=torch.float32)
    return torch.cat([c - half, c + half], dim=1)


# Two overlapping ground truths; anchors inside one, both, none; one anchor of best box but
# centre outside (a3), one predicting a box that overlaps nothing (a4).
HAND_GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
HAND_CLASSES = torch.tensor([0, 1])
HAND_ANCHORS = _around([[2, 5], [7, 5], [12, 5], [20, 5], [3, 3]])
HAND_BOXES = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [5, 0, 15, 10], [0, 0, 10, 10],
                           [20, 20, 25, 25]])
HAND_SCORES = torch.tensor([[0.9, 0.2], [0.5, 0.6], [0.1, 0.8], [0.7, 0.3], [0.4, 0.4]])


def test_task_aligned_matcher_hand_case():
    match = TaskAlignedMatcher(topk=4)(HAND_ANCHORS, HAND_SCORES, HAND_BOXES, HAND_GT,
                                       HAND_CLASSES)
    # a0 -> gt0; a1 inside both goes to gt1 (IoU 9/11 > 6/14); a2 -> gt1; a3 is a top
    # candidate of gt0 but its centre is outside; a4 has t = 0.
    assert match.matched_idxs.tolist() == [0, 1, 1, -1, -1]
    expected_t = [0.9 * 1.0, 0.6 * (9 / 11) ** 6, 0.8 * 1.0, 0.0, 0.0]
    assert match.alignment_metrics.tolist() == pytest.approx(expected_t, rel=1e-5)
    assert match.matched_ious.tolist() == pytest.approx([1.0, 9 / 11, 1.0, 0, 0], rel=1e-5)
    # Top-1: a1 is no gt's best candidate.
    top1 = TaskAlignedMatcher(topk=1)(HAND_ANCHORS, HAND_SCORES, HAND_BOXES, HAND_GT,
                                      HAND_CLASSES)
    assert top1.matched_idxs.tolist() == [0, -1, 1, -1, -1]


def test_normalized_alignment_targets_by_hand():
    match = TaskAlignedMatcher(topk=4)(HAND_ANCHORS, HAND_SCORES, HAND_BOXES, HAND_GT,
                                       HAND_CLASSES)
    targets = normalized_alignment_targets(match)
    # gt0: one positive, t / t * IoU 1.  gt1: max t 0.8 (a2), max IoU 1 (a2).
    a1 = 0.6 * (9 / 11) ** 6 / (0.8 + 1e-7) * 1.0
    assert targets.tolist() == pytest.approx([0.9 / (0.9 + 1e-7), a1, 0.8 / (0.8 + 1e-7), 0, 0],
                                             rel=1e-6)
    # Max IoU below 1: the largest target is that IoU, the others in proportion to t.
    from hpf.modeling.task_aligned_assigner import TaskAlignedMatch

    m = TaskAlignedMatch(torch.tensor([0, 0, -1, 1]), torch.tensor([0.2, 0.1, 0.0, 0.05]),
                         torch.tensor([0.7, 0.8, 0.0, 0.5]))
    assert normalized_alignment_targets(m).tolist() == pytest.approx(
        [0.8, 0.4, 0.0, 0.5], rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_aligned_matcher_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    num_anchors, num_gt, num_classes = 60, 4, 3
    centres = torch.rand(num_anchors, 2, generator=gen) * 40
    anchors = torch.cat([centres - 4, centres + 4], 1)
    boxes = torch.cat([centres - torch.rand(num_anchors, 2, generator=gen) * 12,
                       centres + torch.rand(num_anchors, 2, generator=gen) * 12], 1)
    xy = torch.rand(num_gt, 2, generator=gen) * 25
    gts = torch.cat([xy, xy + 6 + torch.rand(num_gt, 2, generator=gen) * 15], 1)
    gts[3] = gts[2]  # a duplicate (box and class): equal IoUs, the lower index wins
    classes = torch.randint(0, num_classes, (num_gt,), generator=gen)
    classes[3] = classes[2]
    scores = torch.rand(num_anchors, num_classes, generator=gen)
    match = TaskAlignedMatcher(topk=7)(anchors, scores, boxes, Boxes(gts), classes)
    matched, metrics, ious = loop_reference(anchors, scores, boxes, gts, classes, topk=7)
    assert match.matched_idxs.tolist() == matched
    assert 3 not in matched and (match.matched_idxs >= 0).sum() >= 5
    assert match.alignment_metrics.tolist() == pytest.approx(metrics, rel=1e-4, abs=1e-12)
    assert match.matched_ious.tolist() == pytest.approx(ious, rel=1e-5)


def test_task_aligned_matcher_without_ground_truth_or_with_bad_shapes():
    matcher = TaskAlignedMatcher()
    match = matcher(HAND_ANCHORS, HAND_SCORES, HAND_BOXES, torch.zeros(0, 4),
                    torch.zeros(0, dtype=torch.long))
    assert (match.matched_idxs == -1).all() and (normalized_alignment_targets(match) == 0).all()
    with pytest.raises(ValueError, match="pred_scores must be"):
        matcher(HAND_ANCHORS, HAND_SCORES[:3], HAND_BOXES, HAND_GT, HAND_CLASSES)
    with pytest.raises(ValueError, match="gt_boxes must be"):
        matcher(HAND_ANCHORS, HAND_SCORES, HAND_BOXES, HAND_GT[:, :3], HAND_CLASSES)


def test_giou_loss_equals_fvcore_and_accepts_crossed_boxes():
    from fvcore.nn import giou_loss as fvcore_giou_loss

    from hpf.modeling.tood import giou_loss

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, 2, generator=gen) * 50
    pred = torch.cat([xy[:, 0], xy[:, 0] + 1 + torch.rand(20, 2, generator=gen) * 30], 1)
    target = torch.cat([xy[:, 1], xy[:, 1] + 1 + torch.rand(20, 2, generator=gen) * 30], 1)
    assert torch.allclose(giou_loss(pred, target), fvcore_giou_loss(pred, target), atol=1e-5)
    # x1 > x2: no intersection, the enclosing box of the corners: 1 - (0 - 1) = 2.
    crossed = giou_loss(torch.tensor([[10.0, 0, 0, 10]]), torch.tensor([[0.0, 0, 10, 10]]))
    assert crossed.item() == pytest.approx(2.0, abs=1e-4)


# --- the aligned score -----------------------------------------------------------------
def test_combined_score_logit_round_trips_and_is_finite():
    values = [-1e4, -100.0, -20.0, -3.0, 0.0, 0.5, 4.0, 20.0, 60.0, 100.0, 1e4]
    a, b = torch.meshgrid(torch.tensor(values), torch.tensor(values), indexing="ij")
    a, b = a.flatten().requires_grad_(), b.flatten().requires_grad_()
    logit = combined_score_logit(a, b)
    assert torch.isfinite(logit).all()
    score = torch.sqrt(torch.sigmoid(a.double()) * torch.sigmoid(b.double()))
    assert torch.allclose(logit.sigmoid().double(), score, rtol=1e-5, atol=1e-30)
    # Where the score is not saturated, the logit itself: log p - log(1 - p).
    mid = (score > 1e-6) & (score < 1 - 1e-6)
    assert torch.allclose(logit.double()[mid], torch.logit(score[mid]), rtol=1e-5, atol=1e-5)
    logit.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # Under bfloat16 logits the result is float32.
    assert combined_score_logit(a.detach().bfloat16(), b.detach().bfloat16()).dtype == torch.float32


# --- the detector ----------------------------------------------------------------------
def test_assignment_switches_from_atss_to_tal_at_initial_iters():
    model = tiny_model(initial_iters=5)
    calls = []
    atss, tal = model.anchor_matcher, model.alignment_matcher
    model.anchor_matcher = lambda *args: calls.append("atss") or atss(*args)
    model.alignment_matcher = lambda *args: calls.append("tal") or tal(*args)
    seen = []
    model.initial_cls_loss.register_forward_pre_hook(lambda m, args: seen.append("focal"))
    model.cls_loss.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    data = synthetic_batch((2, 1), 64, NUM_CLASSES, extent=0.5, min_side=16)
    for it, phase in ((4, "atss"), (5, "tal"), (6, "tal")):
        calls.clear(), seen.clear()
        with EventStorage(it):
            assert model.in_initial_phase() == (phase == "atss")
            losses = model(data)
        assert set(calls) == {phase} and len(calls) == 2  # one call per image
        assert torch.isfinite(sum(losses.values()))
        if phase == "atss":
            assert seen == ["focal"]
        else:  # QFL with the normalised alignment targets: soft, in (0, 1]
            assert len(seen) == 1
            targets = torch.cat([t.flatten() for t in seen[0]])
            positive = targets[targets > 0]
            assert len(positive) > 0 and positive.max() <= 1.0 and positive.min() < 1.0


def test_tal_loss_uses_the_reference_normalisers():
    """loss_cls = QFL sum / sum of targets, loss_box = 2 sum(w GIoU) / sum(w), w = targets."""
    from hpf.losses.baselines import quality_focal_loss
    from hpf.modeling.tood import giou_loss

    model = tiny_model(initial_iters=0)
    data = synthetic_batch((2, 1), 64, NUM_CLASSES, extent=0.5, min_side=16)
    captured = {}
    original = model.losses

    def spy(anchors, score_logits, gt_labels, pred_boxes, gt_boxes, targets=None):
        captured.update(logits=score_logits, labels=gt_labels, boxes=pred_boxes, gt=gt_boxes,
                        targets=targets)
        return original(anchors, score_logits, gt_labels, pred_boxes, gt_boxes, targets)

    model.losses = spy
    with EventStorage(0):
        losses = model(data)
    targets = captured["targets"]
    labels = torch.stack(captured["labels"])
    pos = labels < NUM_CLASSES
    # Neither normaliser is the clamp's 1 nor the count of positives.
    assert 1.0 < targets.sum() < pos.sum() - 1
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1)[..., :-1].float()
    logits = torch.cat(captured["logits"], 1).detach()
    qfl = quality_focal_loss(logits, one_hot * targets[..., None]).sum()
    assert losses["loss_cls"].item() == pytest.approx(
        qfl.item() / max(targets.sum().item(), 1.0), rel=1e-5)
    pred = torch.cat(captured["boxes"], 1).detach()[pos]
    gt = torch.stack(captured["gt"])[pos]
    box = 2.0 * (giou_loss(pred, gt) * targets[pos]).sum() / max(targets.sum().item(), 1.0)
    assert losses["loss_box_reg"].item() == pytest.approx(box.item(), rel=1e-5)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_one_training_step_per_config(config):
    model = tiny_model(config, initial_iters=1)
    if config.endswith("hpf"):
        assert isinstance(model.cls_loss, ProgressiveQualityFocalLoss)
        assert isinstance(model.initial_cls_loss, ProgressiveFocalLoss)
    else:
        assert type(model.cls_loss) is QualityFocalLoss and model.cls_loss.beta == 2.0
        assert type(model.initial_cls_loss) is FocalLoss
    data = synthetic_batch((3, 0), 64, NUM_CLASSES, extent=0.5, min_side=16)
    for it in (0, 1):  # ATSS phase, then TAL
        model.zero_grad()
        with EventStorage(it):
            losses = model(data)
        assert set(losses) == {"loss_cls", "loss_box_reg"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
        sum(losses.values()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_empty_batch_keeps_every_head_parameter_in_the_graph():
    model = tiny_model(initial_iters=1)
    for it in (0, 1):
        model.zero_grad()
        with EventStorage(it):
            losses = model(synthetic_batch((0, 0), 64, NUM_CLASSES))
        assert losses["loss_box_reg"].item() == 0.0
        sum(losses.values()).backward()
        for name, p in model.head.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_prior_sets_both_factors_of_the_score():
    cfg = LazyConfig.load(os.path.join(REPO, "configs", CONFIGS["shapes"])).model
    cfg.prior_prob = 0.05
    model = instantiate(cfg)
    bias = math.log(0.05 / 0.95)
    assert torch.allclose(model.head.cls_score.bias, torch.full((4,), bias))
    assert model.head.cls_prob[-1].bias.item() == pytest.approx(bias)


def test_inference_scores_and_non_finite_predictions():
    model = tiny_model()
    model.eval()
    model.test_score_thresh = 0.0
    data = synthetic_batch((1,), 64, NUM_CLASSES)
    with torch.no_grad():
        out = model(data)[0]["instances"]
        assert 0 < len(out) <= 100
        # The untrained score is about the prior, sqrt(0.01 * 0.01).
        assert ((out.scores > 0.005) & (out.scores < 0.02)).all()
        images = model.preprocess_image(data)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        predictions = model.head(features)
        for value in (float("inf"), float("-inf"), float("nan")):
            bad = [[torch.full_like(x, value) for x in level] for level in predictions]
            assert len(model.forward_inference(images, features, bad)[0]) == 0


def _shapes_batch(num_images=2):
    from hpf.data.shapes import ShapesSpec, render_shapes_image

    spec = ShapesSpec(min_image_size=72, max_image_size=80, min_object_size=16,
                      max_object_size=40, max_objects=3, max_distractors=0)
    batch = []
    for index in range(num_images):
        image, objects = render_shapes_image(spec, "train", index)
        h, w = image.shape[:2]
        xywh = torch.tensor([o["bbox"] for o in objects], dtype=torch.float32).view(-1, 4)
        inst = Instances((h, w), gt_boxes=Boxes(torch.cat([xywh[:, :2], xywh[:, :2]
                                                           + xywh[:, 2:]], 1)),
                         gt_classes=torch.tensor([o["category_id"] - 1 for o in objects]))
        bgr = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))
        batch.append({"image": bgr.float(), "instances": inst, "height": h, "width": w})
    return batch, len(spec.classes)


def test_short_shapes_run_decreases_the_loss():
    data, num_classes = _shapes_batch()
    model = tiny_model("shapes", initial_iters=0, num_classes=num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    totals = []
    with EventStorage(0) as storage:
        for _ in range(25):
            total = sum(model(data).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            storage.step()
            totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.7 * sum(totals[:3]) / 3, totals


@pytest.mark.parametrize("baseline,hpf", [(CONFIGS["coco"], CONFIGS["coco_hpf"]),
                                          (CONFIGS["shapes"], CONFIGS["shapes_hpf"])])
def test_hpf_configs_change_only_the_losses(baseline, hpf):
    base, row = (LazyConfig.load(os.path.join(REPO, "configs", p)) for p in (baseline, hpf))
    for key in ("cls_loss", "initial_cls_loss"):
        assert base.model[key]._target_ in (QualityFocalLoss, FocalLoss)
        del base.model[key], row.model[key]
    unresolved = lambda c: OmegaConf.to_container(c, resolve=False)  # noqa: E731
    for key in ("model", "optimizer", "dataloader", "lr_multiplier"):
        assert unresolved(base[key]) == unresolved(row[key]), key
    assert base.train.max_iter == row.train.max_iter
