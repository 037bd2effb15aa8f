"""The GHM paper's ablation settings as the configs build them: GHM-C without EMA (Table 1),
the CE baseline (Table 4) and ASL1 alone (Table 5), by hand."""

import math

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from conftest import REPO
from hpf.losses import GHMCLoss, GHMRLoss


def _config_loss(name, key):
    cfg = LazyConfig.load(f"{REPO}/configs/COCO-Detection/{name}.py")
    return instantiate(cfg.model[key])


# GHM test_ghm_loss's hand example: x = [0, -2, 2], y = 0, bins 2, momentum 0 -> 0.768483.
# One level; GHM-C does not use the normalizer.
X_Y = ([torch.tensor([[0.0, -2.0, 2.0]])], [torch.zeros(1, 3)], None)


def test_momentum_zero_is_no_ema():
    # A first batch whose entries all fall in bin 1 (g = sigmoid(3) = 0.95) would change an EMA
    # density; with momentum 0 each call uses only its own counts R_j (Eq. 9).
    history = ([torch.tensor([[3.0, 3.0, 3.0, 3.0]])], [torch.zeros(1, 4)], None)
    no_ema = GHMCLoss(bins=2, momentum=0.0)
    no_ema(*history)
    assert no_ema(*X_Y).item() == pytest.approx(0.768483, abs=1e-6)
    assert torch.count_nonzero(no_ema.acc_sum) == 0  # no running counts are kept
    # The same history does change the result with EMA: after it acc = [0, 0.25 x 4] and
    # then [0.25 x 1, 0.75 x 1 + 0.25 x 2] = [0.25, 1.25].
    ema = GHMCLoss(bins=2, momentum=0.75)
    ema(*history)
    bce = [math.log(2), math.log1p(math.exp(-2.0)), math.log1p(math.exp(2.0))]
    expected = (3 / 0.25 / 2 * bce[1] + 3 / (0.75 + 0.25 * 2) / 2 * (bce[0] + bce[2])) / 3
    assert ema(*X_Y).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(0.768483, abs=1e-3)


def test_noema_config_is_ghmc_with_momentum_zero():
    loss = _config_loss("retinanet_ghmc_noema_R_50_FPN_1x", "cls_loss")
    assert isinstance(loss, GHMCLoss) and loss.per_level
    assert (loss.bins, loss.momentum) == (30, 0.0)


def test_ce_config_starts_near_one():
    # GHM Sec. "GHM-C Loss": CE with the bias from pi = 0.01 and weight 20 starts "around 1":
    # all-negative targets on 5 levels, each level's mean CE -log(0.99) = 0.0100503.
    loss = _config_loss("retinanet_ce_R_50_FPN_1x", "cls_loss")
    bias = -math.log(0.99 / 0.01)
    logits = [torch.full((2, n, 80), bias) for n in (900, 225, 64, 16, 4)]
    targets = [torch.zeros_like(x) for x in logits]
    value = loss(logits, targets, None, [torch.ones(x.shape[:2], dtype=torch.bool) for x in logits])
    # float32 sums of ~1.5e5 equal terms: their order (threads) moves the last digits
    assert value.item() == pytest.approx(5 * 20 * -math.log(0.99), rel=1e-4)
    assert value.item() == pytest.approx(1.00503, abs=1e-4)


def test_ce_config_is_plain_ce_per_level():
    # Mixed targets and an ignored anchor: 20 x sum over levels of the mean BCE over the valid
    # entries, whatever the distribution of g (one unit region, no EMA: every beta = 1).
    loss = _config_loss("retinanet_ce_R_50_FPN_1x", "cls_loss")
    torch.manual_seed(0)
    logits = [torch.randn(2, 6, 3) * 3, torch.randn(2, 2, 3) * 3]
    targets = [(torch.rand(2, 6, 3) < 0.2).float(), (torch.rand(2, 2, 3) < 0.2).float()]
    valid = [torch.ones(2, 6, dtype=torch.bool), torch.tensor([[True, False], [True, True]])]
    for _ in range(2):  # no state carried between calls
        expected = 20 * sum(
            torch.nn.functional.binary_cross_entropy_with_logits(x[v], t[v])
            for x, t, v in zip(logits, targets, valid)
        )
        torch.testing.assert_close(loss(logits, targets, None, valid), expected)


def asl1(d, mu=0.02):
    return math.sqrt(d * d + mu * mu) - mu


def test_asl1_config_is_unweighted_asl1():
    loss = _config_loss("retinanet_ghmc_asl1_R_50_FPN_1x", "box_loss")
    assert isinstance(loss, GHMRLoss)
    # Two levels of box deltas d = pred - target (target 0). Eq. 17 by hand:
    # level 0: ASL1 = [0, 0.0000249844, 0.980200, 0.480400] -> mean 0.365156
    # level 1: ASL1 = [0.00828427, 0.00828427, 0.280666, 1.980100] -> mean 0.569334
    # loss = 10 x (0.365156 + 0.569334) = 9.344898 (weight 10, GHM-R's; all beta = 1)
    d0 = [0.0, 0.001, 1.0, -0.5]
    d1 = [0.02, -0.02, 0.3, 2.0]
    pred = [torch.tensor([d0], requires_grad=True), torch.tensor([d1], requires_grad=True)]
    target = [torch.zeros(1, 4), torch.zeros(1, 4)]
    expected = 10 * (sum(map(asl1, d0)) / 4 + sum(map(asl1, d1)) / 4)
    assert expected == pytest.approx(9.344898, abs=1e-5)
    for _ in range(2):  # the same on a second call: no EMA, no harmonizing
        value = loss(pred, target)
        assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    # dASL1/dd = d / sqrt(d^2 + mu^2) (Eq. 18), times 10 / 4 per level.
    grad = [10 / 4 * d / math.sqrt(d * d + 0.02**2) for d in d1]
    torch.testing.assert_close(pred[1].grad, torch.tensor([grad]))
