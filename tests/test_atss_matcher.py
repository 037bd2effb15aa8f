"""Tests of hpf.modeling.matcher.ATSSMatcher against a plain loop implementation of ATSS."""

import math

import pytest
import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes

from hpf.modeling.matcher import ATSSMatcher

torch.set_num_threads(1)

STRIDES = (8, 16, 32, 64, 128)


def grid_anchors(height=256, width=320):
    """Anchors as the detector makes them: one 8*stride square per location, offset 0."""
    gen = DefaultAnchorGenerator(
        sizes=[[64], [128], [256], [512], [1024]], aspect_ratios=[[1.0]],
        strides=list(STRIDES), offset=0.0,
    )
    feats = [torch.zeros(1, 1, math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    return gen(feats)  # list[Boxes]


# ----------------------------------------------------------------------------------------
# Reference: plain Python loops over ground truths, levels and anchors (float64 arithmetic).
# ----------------------------------------------------------------------------------------
def _center(box):
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    if inter <= 0:
        return 0.0
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def loop_atss(anchors_per_level, gt_boxes, topk=9, margin=0.01):
    """ATSS written out directly. Ties in distance: Python's stable sort (lower anchor index
    first). Ties in IoU across ground truths: the first ground truth keeps the anchor.

    Returns (matched list, info). info["exact_ties"] counts exact distance ties at the k-th
    place; info["near_ties"] near ties there (float32 may order them either way);
    info["fragile"] is the set of anchors whose outcome float32 rounding in the matcher could
    legitimately flip: an IoU within 1e-5 of the threshold, a centre within 1e-4 of the
    margin, or nearly (not exactly) equal IoUs for two ground truths.
    """
    levels = [(a.tensor if isinstance(a, Boxes) else a).tolist() for a in anchors_per_level]
    gts = (gt_boxes.tensor if isinstance(gt_boxes, Boxes) else gt_boxes).tolist()
    flat = [box for level in levels for box in level]
    best_gt = [-1] * len(flat)
    best_iou = [None] * len(flat)
    info = {"exact_ties": 0, "near_ties": 0, "fragile": set()}
    for g, gt in enumerate(gts):
        gcx, gcy = _center(gt)
        candidates = []
        start = 0
        for level in levels:
            d2 = []
            for box in level:
                cx, cy = _center(box)
                d2.append((cx - gcx) ** 2 + (cy - gcy) ** 2)
            order = sorted(range(len(level)), key=lambda i: d2[i])  # stable
            k = min(topk, len(level))
            if k < len(level):
                last, nxt = d2[order[k - 1]], d2[order[k]]
                if last == nxt:
                    info["exact_ties"] += 1
                elif nxt - last <= 1e-5 * max(last, 1.0):
                    info["near_ties"] += 1
            candidates += [start + i for i in order[:k]]
            start += len(level)
        ious = [_iou(flat[a], gt) for a in candidates]
        n = len(ious)
        if n < 2:  # unbiased std of one sample is undefined (NaN): nothing positive
            continue
        mean = sum(ious) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (n - 1))
        thr = mean + std
        for a, v in zip(candidates, ious):
            cx, cy = _center(flat[a])
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy)
            if abs(v - thr) < 1e-5 or abs(inside - margin) < 1e-4:
                info["fragile"].add(a)
            if v >= thr and inside > margin:
                if best_gt[a] == -1 or v > best_iou[a]:
                    if best_gt[a] != -1 and abs(v - best_iou[a]) < 1e-6:
                        info["fragile"].add(a)
                    best_gt[a], best_iou[a] = g, v
                elif v != best_iou[a] and abs(v - best_iou[a]) < 1e-6:
                    info["fragile"].add(a)
    return best_gt, info


def check_against_loop(anchors, gts, topk=9, stable_ties=False, expect_positives=True):
    """Runs both implementations and compares; returns the matcher output."""
    matcher = ATSSMatcher(topk=topk, stable_ties=stable_ties)
    matched, ious = matcher(anchors, gts, return_ious=True)
    expected, info = loop_atss(anchors, gts, topk=topk)
    # Exact comparison, except at a float32 knife edge (rare; at most a few anchors).
    assert info["near_ties"] == 0, info
    assert len(info["fragile"]) <= 5, info
    if not stable_ties:  # topk's choice among equal distances is unspecified
        assert info["exact_ties"] == 0, "test input has distance ties; use stable_ties=True"
    assert matched.dtype == torch.long
    assert matched.shape == (sum(len(a) for a in anchors),)
    differ = {i for i, (m, e) in enumerate(zip(matched.tolist(), expected)) if m != e}
    assert differ <= info["fragile"], sorted(differ - info["fragile"])[:20]
    assert len(differ) <= 2
    if expect_positives and len(gts):
        assert (matched >= 0).any()
    # return_ious: the IoU of each positive with its ground truth, 0 for background.
    flat = torch.cat([a.tensor if isinstance(a, Boxes) else a for a in anchors])
    gt_t = gts.tensor if isinstance(gts, Boxes) else gts
    pos = matched >= 0
    assert (ious[~pos] == 0).all()
    if pos.any():
        want = torch.tensor([_iou(a, b) for a, b in
                             zip(flat[pos].tolist(), gt_t[matched[pos]].tolist())])
        torch.testing.assert_close(ious[pos], want.float(), rtol=1e-5, atol=1e-6)
    return matched


def random_gts(gen, n, lo_size, hi_size, cx_range=(0.0, 320.0), cy_range=(0.0, 256.0)):
    w = lo_size + (hi_size - lo_size) * torch.rand(n, generator=gen)
    h = lo_size + (hi_size - lo_size) * torch.rand(n, generator=gen)
    cx = cx_range[0] + (cx_range[1] - cx_range[0]) * torch.rand(n, generator=gen)
    cy = cy_range[0] + (cy_range[1] - cy_range[0]) * torch.rand(n, generator=gen)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


# ----------------------------------------------------------------------------------------
def test_hand_built_case():
    # Level 0: four 2x2 anchors in a row, centres (1,1) (3,1) (5,1) (7,1)  -> indices 0..3
    # Level 1: two 4x4 anchors, centres (2,2) (6,2)                         -> indices 4, 5
    # topk=2, so each GT has 2 + 2 = 4 candidates and thr = mean + unbiased std of 4 IoUs.
    anchors = [
        torch.tensor([[0, 0, 2, 2], [2, 0, 4, 2], [4, 0, 6, 2], [6, 0, 8, 2]], dtype=torch.float),
        torch.tensor([[0, 0, 4, 4], [4, 0, 8, 4]], dtype=torch.float),
    ]
    gts = torch.tensor([
        [1, 0, 4, 3],          # GT0, centre (2.5, 1.5)
        [0, 0, 4, 4],          # GT1, centre (2, 2): identical to anchor 4
        [4, 1.995, 8, 4],      # GT2, centre (6, 2.9975)
        [6, 0, 8, 2],          # GT3, centre (7, 1): identical to anchor 3
    ])
    # GT0: L0 distances a0 1.58, a1 0.71, a2 2.55 -> {a1, a0}; L1 -> {a4, a5}.
    #      IoUs a0 2/11=.1818, a1 4/9=.4444, a4 9/16=.5625, a5 0.
    #      mean .2972, std .2541, thr .5513 -> a4 (centre (2,2) inside, min dist 1): positive.
    # GT1: L0 {a0, a1} (both at sqrt 2); L1 {a4, a5}. IoUs .25 .25 1 0; mean .375,
    #      std .4330, thr .8080 -> a4 positive (IoU 1).
    # GT2: L0 {a2, a3} (both at 2.23); L1 {a5, a4}. IoUs a2 = a3 = 0.01/12.01 = .00083,
    #      a5 8.02/16 = .50125, a4 0; mean .1257, std .2504, thr .3761 -> a5 passes IoU, but
    #      its centre (6,2) is only 2 - 1.995 = 0.005 px below the GT's top edge, not more
    #      than the 0.01 px margin -> rejected. GT2 gets nothing.
    # GT3: L0 {a3 (d 0), a2 (d 2)}; L1 {a5, a4}. IoUs 1, 0, .25, 0; mean .3125, std .4732,
    #      thr .7857 -> a3 positive.
    # a4 is positive for GT0 (IoU .5625) and GT1 (IoU 1): the higher IoU wins -> GT1, even
    # though GT0 has the lower index.
    matcher = ATSSMatcher(topk=2)
    matched, ious = matcher(anchors, gts, return_ious=True)
    assert matched.tolist() == [-1, -1, -1, 3, 1, -1]
    torch.testing.assert_close(ious, torch.tensor([0, 0, 0, 1.0, 1.0, 0]))
    assert loop_atss(anchors, gts, topk=2)[0] == [-1, -1, -1, 3, 1, -1]
    # Without the margin GT2 would take a5 (centre 0.005 px inside).
    assert ATSSMatcher(topk=2, center_margin=0.0)(anchors, gts).tolist() == [-1, -1, -1, 3, 1, 2]


def test_iou_equal_to_threshold_is_positive():
    # topk=1 on two one-anchor levels; both anchors have IoU 4/8 = 0.5 with the GT and centres
    # inside it: mean 0.5, std 0, thr 0.5 exactly, and IoU >= thr makes both positive.
    anchors = [torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[2.0, 0.0, 4.0, 2.0]])]
    gts = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    assert ATSSMatcher(topk=1)(anchors, gts).tolist() == [0, 0]


def test_no_ground_truth():
    anchors = grid_anchors()
    for gts in (torch.zeros(0, 4), Boxes(torch.zeros(0, 4)), torch.zeros(0)):
        matched, ious = ATSSMatcher()(anchors, gts, return_ious=True)
        assert matched.dtype == torch.long and matched.shape == (1706,)
        assert (matched == -1).all() and (ious == 0).all()


def test_no_anchors():
    gts = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    assert ATSSMatcher()([torch.zeros(0, 4)] * 3, gts).shape == (0,)
    assert ATSSMatcher()([], gts).shape == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_single_gt(seed):
    gen = torch.Generator().manual_seed(seed)
    check_against_loop(grid_anchors(), random_gts(gen, 1, 20, 250))


@pytest.mark.parametrize("seed", range(5))
def test_random_gts_grid_anchors(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    n = (3, 8, 20, 30, 12)[seed]
    check_against_loop(grid_anchors(), random_gts(gen, n, 8, 300))


@pytest.mark.parametrize("seed", range(3))
def test_tiny_boxes(seed):
    # Boxes of 0.5-6 px, far smaller than the smallest (64 px) anchor.
    gen = torch.Generator().manual_seed(200 + seed)
    check_against_loop(grid_anchors(), random_gts(gen, 10, 0.5, 6))


@pytest.mark.parametrize("seed", range(3))
def test_huge_boxes(seed):
    # Boxes of 400-1500 px on a 256x320 image.
    gen = torch.Generator().manual_seed(300 + seed)
    check_against_loop(grid_anchors(), random_gts(gen, 6, 400, 1500))


@pytest.mark.parametrize("seed", range(3))
def test_gt_centres_outside_all_anchors(seed):
    # Anchor centres span x in [0, 312], y in [0, 248]; these GT centres lie beyond them
    # (right of / below the image): small boxes get nothing, wide ones may still reach
    # anchor centres near the border.
    gen = torch.Generator().manual_seed(400 + seed)
    right = random_gts(gen, 6, 10, 300, cx_range=(330, 500), cy_range=(-50, 300))
    below = random_gts(gen, 6, 10, 300, cx_range=(-50, 350), cy_range=(-250, -20))
    small = random_gts(gen, 3, 4, 30, cx_range=(400, 600), cy_range=(300, 400))
    matched = check_against_loop(grid_anchors(), torch.cat([right, below, small]),
                                 expect_positives=False)
    assert not set(matched.tolist()) & {12, 13, 14}  # the small, far-away boxes


@pytest.mark.parametrize("stable_ties", [False, True])
def test_duplicate_gts(stable_ties):
    gen = torch.Generator().manual_seed(500)
    base = random_gts(gen, 5, 30, 250)
    gts = torch.cat([base, base[[1, 3]], base[[1]]])  # indices 5, 7 duplicate 1; 6 dup. 3
    matched = check_against_loop(grid_anchors(), gts, stable_ties=stable_ties)
    # Equal IoUs across ground truths: the lowest index keeps the anchor.
    assert not set(matched.tolist()) & {5, 6, 7}
    alone = ATSSMatcher(stable_ties=stable_ties)(grid_anchors(), base)
    assert torch.equal(matched, alone)


@pytest.mark.parametrize("seed", range(4))
def test_levels_with_fewer_than_k_anchors(seed):
    # Random anchors; some levels hold fewer than topk anchors, one holds none.
    gen = torch.Generator().manual_seed(600 + seed)
    sizes = [(40, 5, 0, 3, 1), (12, 9, 8, 2, 0), (0, 30, 1, 1, 7), (25, 4, 4, 0, 0)][seed]
    anchors = [random_gts(gen, n, 10 * 2 ** i, 40 * 2 ** i) for i, n in enumerate(sizes)]
    gts = random_gts(gen, 7, 10, 200)
    check_against_loop(anchors, gts, topk=9)
    check_against_loop(anchors, gts, topk=4, expect_positives=False)


def test_small_image_grid():
    # 64x64 image: levels of 64, 16, 4, 1, 1 anchors (the last two have fewer than 9).
    gen = torch.Generator().manual_seed(700)
    check_against_loop(grid_anchors(64, 64), random_gts(gen, 4, 5, 60, (0, 64), (0, 64)))


def test_single_anchor_in_total_gives_no_positives():
    # One candidate in total: its unbiased std is NaN, as in the reference -> no positives.
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(0, 4)]
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert ATSSMatcher()(anchors, gts).tolist() == [-1]


def test_boxes_and_tensors_agree():
    gen = torch.Generator().manual_seed(800)
    gts = random_gts(gen, 12, 10, 300)
    anchors = grid_anchors()
    matcher = ATSSMatcher()
    as_boxes = matcher(anchors, Boxes(gts))
    as_tensors = matcher([a.tensor for a in anchors], gts)
    mixed = matcher([a.tensor if i % 2 else a for i, a in enumerate(anchors)], gts.double())
    assert torch.equal(as_boxes, as_tensors) and torch.equal(as_boxes, mixed)
    assert (as_boxes >= 0).any()


@pytest.mark.parametrize("seed", range(3))
def test_stable_ties_on_integer_grid(seed):
    # Integer (even-sized) boxes: centres on or half way between anchor centres, so many
    # anchors are exactly equally distant and the k-th place is often a tie. stable_ties
    # takes the lower anchor index first, like the loop's stable sort.
    gen = torch.Generator().manual_seed(900 + seed)
    n = 15
    wh = torch.randint(2, 150, (n, 2), generator=gen) * 2
    c = torch.stack([torch.randint(0, 80, (n,), generator=gen) * 4,
                     torch.randint(0, 64, (n,), generator=gen) * 4], dim=1)
    gts = torch.cat([c - wh // 2, c + wh // 2], dim=1).float()
    info = loop_atss(grid_anchors(), gts)[1]
    assert info["exact_ties"] > 0  # the test exercises ties
    matched = check_against_loop(grid_anchors(), gts, stable_ties=True)
    # float64 input is processed in float32; same result on these exactly representable boxes.
    as_double = ATSSMatcher(stable_ties=True)([a.tensor.double() for a in grid_anchors()], gts)
    assert torch.equal(matched, as_double)


def test_default_and_stable_agree_without_ties():
    gen = torch.Generator().manual_seed(1000)
    gts = random_gts(gen, 25, 8, 300)
    assert loop_atss(grid_anchors(), gts)[1]["exact_ties"] == 0
    a = ATSSMatcher(stable_ties=False)(grid_anchors(), gts)
    b = ATSSMatcher(stable_ties=True)(grid_anchors(), gts)
    assert torch.equal(a, b)


def test_default_ties_are_valid():
    # With exact distance ties the default (reference) mode may pick any of the tied anchors;
    # its positives must still satisfy the rule: IoU >= a threshold and centre inside.
    gts = torch.tensor([[100.0, 100.0, 164.0, 140.0], [0.0, 0.0, 60.0, 60.0]])
    anchors = grid_anchors()
    matched, ious = ATSSMatcher()(anchors, gts, return_ious=True)
    flat = torch.cat([a.tensor for a in anchors])
    pos = matched >= 0
    assert pos.any()
    centres = (flat[pos, :2] + flat[pos, 2:]) / 2
    g = gts[matched[pos]]
    assert ((centres > g[:, :2] + 0.01) & (centres < g[:, 2:] - 0.01)).all()
    assert (ious[pos] > 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(1100)
    gts = random_gts(gen, 30, 8, 300)
    cpu = ATSSMatcher()(grid_anchors(), gts)
    gpu = ATSSMatcher()([a.tensor.cuda() for a in grid_anchors()], gts.cuda())
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    wh = torch.randint(2, 150, (15, 2), generator=gen) * 2
    c = torch.randint(0, 64, (15, 2), generator=gen) * 4
    gts = torch.cat([c - wh // 2, c + wh // 2], dim=1).float()
    m = ATSSMatcher(stable_ties=True)
    gpu = m([a.tensor.cuda() for a in grid_anchors()], gts)  # gts are moved to the anchors
    assert gpu.device.type == "cuda" and torch.equal(m(grid_anchors(), gts), gpu.cpu())
