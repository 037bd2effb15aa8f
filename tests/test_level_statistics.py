"""hpf.analysis.level_statistics and the RecordLevelStatistics hook: per-level positives and the
loss / gradient of hard and easy classification entries, by hand and on a training run."""
import copy
import json
import math
import os

import pytest
import torch

from hpf.analysis.level_statistics import (
    CATEGORIES,
    LevelStatisticsRecorder,
    entry_categories,
    sums_to_record,
)
from hpf.analysis.level_summaries import gradient_shares

LN2 = math.log(2.0)


def _logit(p):
    return math.log(p / (1 - p))


# Six entries: three anchors of two classes. Anchor 0 is a positive of class 0, anchor 1 a
# negative, anchor 2 a positive of class 1. Probabilities and what the rules make of them at
# t = ln 2 (BCE = -log p for a positive, -log(1 - p) for a negative):
#   entry  p    target  BCE                kind       |p - y| (the gradient of summed BCE)
#   0      0.9  1       -log 0.9 = 0.1054  pos easy   0.1
#   1      0.2  0       -log 0.8 = 0.2231  neg easy   0.2
#   2      0.6  0       -log 0.4 = 0.9163  neg hard   0.6
#   3      0.1  0       -log 0.9 = 0.1054  neg easy   0.1
#   4      0.3  0       -log 0.7 = 0.3567  neg easy   0.3
#   5      0.4  1       -log 0.4 = 0.9163  pos hard   0.6
PROBS = [[0.9, 0.2], [0.6, 0.1], [0.3, 0.4]]
TARGETS = [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
POSITIVE = [True, False, True]


def _six_entries():
    logits = torch.tensor([[[_logit(p) for p in row] for row in PROBS]], dtype=torch.float64)
    return logits.requires_grad_(), torch.tensor([TARGETS], dtype=torch.float64)


def _record_six(valid=None):
    logits, targets = _six_entries()
    recorder = LevelStatisticsRecorder(["p3"], threshold=LN2)
    recorder.observe([logits], [targets], [torch.tensor([POSITIVE])],
                     None if valid is None else [torch.tensor([valid])])
    # A summed BCE: the gradient of each logit is p - y.
    torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum").backward()
    return sums_to_record(recorder.collect(), 0, ["p3"], LN2)


def test_entry_categories_by_hand():
    logits, targets = _six_entries()
    category, bce = entry_categories(logits, targets, LN2)
    names = [CATEGORIES[i] for i in category.flatten().tolist()]
    assert names == ["pos_easy", "neg_easy", "neg_hard", "neg_easy", "neg_easy", "pos_hard"]
    expected = [-math.log(0.9), -math.log(0.8), -math.log(0.4), -math.log(0.9), -math.log(0.7),
                -math.log(0.4)]
    assert bce.flatten().tolist() == pytest.approx(expected, rel=1e-6)


def test_six_entries_sums_and_gradient_shares_by_hand():
    record = _record_six()
    assert record["anchors"] == [3] and record["positives"] == [2]
    assert {c: v[0] for c, v in record["count"].items()} == {
        "pos_hard": 1, "pos_easy": 1, "neg_hard": 1, "neg_easy": 3}
    loss = {c: v[0] for c, v in record["loss"].items()}
    assert loss["pos_hard"] == pytest.approx(-math.log(0.4))
    assert loss["pos_easy"] == pytest.approx(-math.log(0.9))
    assert loss["neg_hard"] == pytest.approx(-math.log(0.4))
    assert loss["neg_easy"] == pytest.approx(-math.log(0.8) - math.log(0.9) - math.log(0.7))
    grad = {c: v[0] for c, v in record["grad"].items()}
    assert grad == pytest.approx({"pos_hard": 0.6, "pos_easy": 0.1, "neg_hard": 0.6,
                                  "neg_easy": 0.2 + 0.1 + 0.3})
    # Shares of the gradient (the reader's, as the drift plots use them): hard = (0.6 + 0.6) /
    # 1.9 of all; among the positives 0.6 / 0.7; among the negatives 0.6 / 1.2.
    for samples, hard_share in (("all", 1.2 / 1.9), ("positive", 0.6 / 0.7),
                                ("negative", 0.6 / 1.2)):
        hard, easy = gradient_shares(record, samples=samples)
        assert hard == pytest.approx(hard_share) and hard + easy == pytest.approx(1.0)


def test_ignored_anchors_are_left_out():
    record = _record_six(valid=[True, False, True])  # anchor 1 (entries 2 and 3) ignored
    assert record["anchors"] == [2] and record["positives"] == [2]
    assert record["count"]["neg_hard"] == [0] and record["count"]["neg_easy"] == [2]
    assert record["grad"]["neg_easy"][0] == pytest.approx(0.2 + 0.3)


def test_inactive_recorder_records_nothing():
    logits, targets = _six_entries()
    recorder = LevelStatisticsRecorder(["p3"])
    recorder.active = False
    recorder.observe([logits], [targets], [torch.tensor([POSITIVE])])
    assert recorder.collect().abs().sum() == 0


def test_bad_threshold_and_level_count_are_named():
    with pytest.raises(ValueError, match="threshold"):
        LevelStatisticsRecorder(["p3"], threshold=0.0)
    logits, targets = _six_entries()
    with pytest.raises(ValueError, match=r"1 levels of logits.*2 levels"):
        LevelStatisticsRecorder(["p3", "p4"]).observe([logits], [targets],
                                                      [torch.tensor([POSITIVE])])


def test_hook_refuses_a_model_without_level_statistics(tmp_path):
    from hpf.engine.hooks import RecordLevelStatistics

    with pytest.raises(ValueError, match="Linear records no level statistics"):
        RecordLevelStatistics(torch.nn.Linear(2, 2), str(tmp_path))
    with pytest.raises(ValueError, match="period must be >= 1, got 0"):
        RecordLevelStatistics(torch.nn.Linear(2, 2), str(tmp_path), period=0)


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_training_run_records_every_iteration(analysis_run):
    records = _lines(os.path.join(analysis_run, "level_statistics.json"))
    with open(os.path.join(analysis_run, "metrics.json")) as f:
        metrics = {m["iteration"]: m for m in map(json.loads, f) if "total_loss" in m}
    assert [r["iteration"] for r in records] == list(range(8))
    for r in records:
        assert r["levels"] == ["p3", "p4", "p5", "p6", "p7"] and r["world_size"] == 1
        for k in range(5):
            # Every entry of a valid anchor is in one category (shapes: 4 classes).
            assert sum(r["count"][c][k] for c in CATEGORIES) == 4 * r["anchors"][k]
        assert sum(sum(r["grad"][c]) for c in CATEGORIES) > 0
    # metrics.json smooths (a median over 20 iterations): the first iteration is its own value.
    # Positives per image there, two images per batch.
    assert records[0]["positives"] == [round(2 * metrics[0][f"num_pos/level{k}"]) for k in range(5)]
    # HPF's per-level gamma_ad / alpha_ad reach metrics.json too (Eq. 3-4: alpha = w / gamma).
    first = metrics[0]  # unsmoothed, as above
    for level in range(5):
        assert 1.5 <= first[f"gamma_ad/level{level}"] <= 2.5
        assert first[f"alpha_ad/level{level}"] == pytest.approx(
            0.5 / first[f"gamma_ad/level{level}"])


@pytest.mark.parametrize("arch", ["retinanet", "atss"])
def test_recording_leaves_losses_and_gradients_unchanged(arch, one_thread):
    """The recorder only reads: a training step with it gives the same losses and parameter
    gradients, bit for bit, as without it; RetinaNet's ignored anchors are left out of the
    anchor count."""
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from test_dense_detectors import batch, tiny_model_cfg

    torch.manual_seed(0)
    initial = instantiate(tiny_model_cfg(arch)).train()
    data = batch((3, 1))
    steps = []
    for recorder in (None, LevelStatisticsRecorder(initial.head_in_features)):
        # A copy each: detectron2's RetinaNet updates a running loss normaliser every step.
        model = copy.deepcopy(initial)
        model.level_statistics = recorder
        model.zero_grad()
        with EventStorage():
            losses = model(data)
        sum(losses.values()).backward()
        steps.append(({k: v.detach() for k, v in losses.items()},
                      {n: p.grad.clone() for n, p in model.named_parameters()
                       if p.grad is not None}))
    (losses_off, grads_off), (losses_on, grads_on) = steps
    assert losses_off.keys() == losses_on.keys() and grads_off.keys() == grads_on.keys()
    for k in losses_off:
        assert torch.equal(losses_off[k], losses_on[k]), k
    for n in grads_off:
        assert torch.equal(grads_off[n], grads_on[n]), n
    record = sums_to_record(recorder.collect(), 0, recorder.levels, recorder.threshold)
    assert sum(record["positives"]) > 0 and sum(sum(v) for v in record["grad"].values()) > 0
    if arch == "retinanet":  # anchors with IoU in [0.4, 0.5) are ignored
        num_anchors = sum(len(a) for a in model.anchor_generator(
            model.backbone(model.preprocess_image(data).tensor)[f] for f in model.head_in_features))
        assert sum(record["anchors"]) < len(data) * num_anchors
