"""OHEMLoss (GHM Table 4 "OHEM"): all positives plus the hardest negatives at 1:3, by hand."""

import math

import pytest
import torch

from hpf.losses import OHEMLoss


def softplus(x):
    return math.log1p(math.exp(x))


# One image, one class, two levels. Anchor 0 is the positive (x = 0: BCE = ln 2); the
# negatives have BCE = softplus(x): 2.126928 (x=2), 0.313262 (x=-1), 3.048587 (x=3),
# 0.126928 (x=-2).
LOGITS = [torch.tensor([[[0.0], [2.0], [-1.0]]]), torch.tensor([[[3.0], [-2.0]]])]
TARGETS = [torch.tensor([[[1.0], [0.0], [0.0]]]), torch.zeros(1, 2, 1)]


def test_keeps_positives_and_the_three_hardest_negatives():
    # 1 positive -> 3 negatives: x = 3, 2, -1 are kept, x = -2 (the easiest) is dropped.
    expected = softplus(0.0) + softplus(3.0) + softplus(2.0) + softplus(-1.0)
    assert expected == pytest.approx(6.181924, abs=1e-6)
    assert OHEMLoss()(LOGITS, TARGETS, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # The normalizer divides; neg_pos_ratio 1 keeps only the hardest negative.
    assert OHEMLoss()(LOGITS, TARGETS, 2.0).item() == pytest.approx(expected / 2, rel=1e-6)
    one = OHEMLoss(neg_pos_ratio=1.0)(LOGITS, TARGETS, 1.0).item()
    assert one == pytest.approx(softplus(0.0) + softplus(3.0), rel=1e-6)
    # Fewer negatives than the ratio asks for: all of them are kept.
    every = softplus(0.0) + sum(softplus(x) for x in (2.0, -1.0, 3.0, -2.0))
    assert OHEMLoss(neg_pos_ratio=10)(LOGITS, TARGETS, 1.0).item() == pytest.approx(every, rel=1e-6)


def test_only_kept_anchors_get_gradients():
    logits = [x.clone().requires_grad_(True) for x in LOGITS]
    OHEMLoss()(logits, TARGETS, 1.0).backward()
    # d BCE / dx = sigmoid(x) - y on kept anchors, 0 on the dropped easy negative (x = -2).
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    torch.testing.assert_close(logits[0].grad.flatten(),
                               torch.tensor([sig(0.0) - 1, sig(2.0), sig(-1.0)]))
    torch.testing.assert_close(logits[1].grad.flatten(), torch.tensor([sig(3.0), 0.0]))


def test_mining_is_per_image_and_sums_classes_and_skips_invalid():
    # Image 0: one positive of class 1 (logits [1, -1]: BCE softplus(1) + softplus(1)), and
    # negatives with summed-class BCE a = 2 softplus(2), b = softplus(4) + softplus(-4),
    # c = 2 softplus(-3). b is the hardest but ignored (valid False): 3 negatives allowed, only
    # a and c remain. Image 1 has no positives: its negatives are all dropped, however hard.
    logits = torch.tensor([
        [[1.0, -1.0], [2.0, 2.0], [4.0, -4.0], [-3.0, -3.0]],
        [[5.0, 5.0], [6.0, 6.0], [0.0, 0.0], [1.0, 1.0]],
    ])
    targets = torch.zeros_like(logits)
    targets[0, 0, 1] = 1.0
    valid = torch.tensor([[True, True, False, True], [True, True, True, True]])
    expected = 2 * softplus(1.0) + 2 * softplus(2.0) + 2 * softplus(-3.0)
    # Split into two levels of two anchors each.
    loss = OHEMLoss()(list(logits.split(2, dim=1)), list(targets.split(2, dim=1)), 1.0,
                      list(valid.split(2, dim=1)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_flat_levels_are_one_image():
    flat = OHEMLoss()([x[0] for x in LOGITS], [t[0] for t in TARGETS], 1.0)
    torch.testing.assert_close(flat, OHEMLoss()(LOGITS, TARGETS, 1.0))


def test_no_positives_gives_zero_with_a_graph():
    logits = [torch.randn(2, 5, 3, requires_grad=True)]
    loss = OHEMLoss()(logits, [torch.zeros(2, 5, 3)], 1.0)
    assert loss.item() == 0.0 and loss.requires_grad


def test_bad_arguments():
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        OHEMLoss(neg_pos_ratio=-1)
    with pytest.raises(ValueError, match="per anchor"):
        OHEMLoss()(LOGITS, TARGETS, 1.0, [torch.ones(1, 3, 1, dtype=torch.bool),
                                          torch.ones(1, 2, 1, dtype=torch.bool)])
    with pytest.raises(FloatingPointError):
        OHEMLoss()([torch.tensor([[[float("nan")]]])], [torch.zeros(1, 1, 1)], 1.0)


def test_retinanet_trains_with_it():
    """The detector of GHM Table 4's OHEM row trains a step with it (per-anchor valid masks)."""
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from test_dense_detectors import batch, tiny_model_cfg

    torch.manual_seed(0)
    cfg = tiny_model_cfg("retinanet")
    cfg.cls_loss = OHEMLoss()
    cfg.loss_normalizer = "mean"
    model = instantiate(cfg).train()
    with EventStorage():
        losses = model(batch((3, 0)))
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_cls"] > 0
    assert model.head.cls_score.weight.grad.abs().sum() > 0
