"""QFL, VFL and the progressive PF-QFL (HPF Eq. 6) / PF-VFL (Eq. 7)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpf.losses import (
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    progressive_focus_params,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75


def logit(p):
    return math.log(p / (1 - p))


def test_qfl_hand_computed():
    # q=0.8, x=0 (p=0.5): |0.8-0.5|^2 * -(0.8 ln0.5 + 0.2 ln0.5) = 0.09 * 0.693147 = 0.062383
    # q=0,  x=ln3 (p=0.75): 0.75^2 * -ln(0.25) = 0.5625 * 1.386294 = 0.779791
    out = quality_focal_loss(torch.tensor([[0.0, LN3]]), torch.tensor([[0.8, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.062383, 0.779791]]), atol=1e-6, rtol=0)


def test_vfl_hand_computed():
    # q=0.8, x=0: q * BCE = 0.8 * 0.693147 = 0.554518
    # q=0, x=ln3: alpha p^2 * -ln(1-p) = 0.75 * 0.5625 * 1.386294 = 0.584843
    out = varifocal_loss(torch.tensor([[0.0, LN3]]), torch.tensor([[0.8, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.554518, 0.584843]]), atol=1e-6, rtol=0)


def test_qfl_with_binary_targets_is_unweighted_focal_loss():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4) * 3, (torch.rand(30, 4) < 0.3).float()
    torch.testing.assert_close(
        quality_focal_loss(x, y, beta=1.5), sigmoid_focal_loss(x, y, alpha=-1, gamma=1.5)
    )


def test_pf_qfl_hand_computed():
    # Positive: q=0.8 with p = e^-2 (x = logit(e^-2)) -> gamma_ad = -log p = 2, alpha_ad = 0.25.
    #   |0.8 - 0.135335|^2 = 0.441779 ; (1-0.25)(1-0.8)(-log(1-p)) + 0.25*0.8*(-log p)
    #   = 0.75*0.2*0.145413 + 0.25*0.8*2 = 0.421812 ; 0.441779 * 0.421812 = 0.186348
    # Negative: q=0, x=0: |0-0.5|^2 * 0.75 * 1 * ln2 = 0.25 * 0.519860 = 0.129965
    # Sum / normalizer 1 = 0.316313
    loss_fn = ProgressiveQualityFocalLoss()
    loss = loss_fn(
        [torch.tensor([[logit(math.exp(-2.0)), 0.0]])], [torch.tensor([[0.8, 0.0]])], 1.0
    )
    assert loss.item() == pytest.approx(0.186348 + 0.129965, abs=1e-5)
    assert loss_fn.last_gamma.tolist() == pytest.approx([2.0])
    assert loss_fn.last_alpha.tolist() == pytest.approx([0.25])


def test_pf_vfl_hand_computed():
    # Same inputs; positive: q * BCE(x, q) = 0.8 * (0.8*2 + 0.2*0.145413)
    #   = 0.8 * 1.629083 = 1.303266
    # Negative: alpha_ad * p^gamma_ad * -log(1-p) = 0.25 * 0.25 * 0.693147 = 0.043322
    loss_fn = ProgressiveVarifocalLoss()
    loss = loss_fn(
        [torch.tensor([[logit(math.exp(-2.0)), 0.0]])], [torch.tensor([[0.8, 0.0]])], 2.0
    )
    assert loss.item() == pytest.approx((1.303266 + 0.043322) / 2, abs=1e-5)


def random_quality_levels(seed, sizes=(30, 12), classes=4):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, classes, generator=gen) * 2 for n in sizes]
    qs = [
        torch.where(
            torch.rand(n, classes, generator=gen) < 0.2,
            0.2 + 0.8 * torch.rand(n, classes, generator=gen),
            0.0,
        )
        for n in sizes
    ]
    return xs, qs


def test_pf_qfl_with_half_alpha_is_half_qfl():
    # alpha_ad = w / gamma_ad = 1 / 2 with delta=0: Eq. 6 becomes 0.5 * QFL(beta=2).
    xs, qs = random_quality_levels(1)
    loss = ProgressiveQualityFocalLoss(delta=0.0, w=1.0)(xs, qs, 3.0)
    ref = sum(quality_focal_loss(x, q, beta=2.0, reduction="sum") for x, q in zip(xs, qs)) / 3.0
    torch.testing.assert_close(loss, 0.5 * ref)


def test_pf_qfl_with_w_1_and_loss_weight_2_is_qfl():
    # The configs' PF-QFL: alpha_ad = 1 / 2 at gamma_ad = 2, times 2: QFL, value and gradient.
    xs, qs = random_quality_levels(3)
    xs = [x.requires_grad_(True) for x in xs]
    loss = ProgressiveQualityFocalLoss(delta=0.0, w=1.0, loss_weight=2.0)(xs, qs, 3.0)
    ref = sum(quality_focal_loss(x, q, beta=2.0, reduction="sum") for x, q in zip(xs, qs)) / 3.0
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, xs), torch.autograd.grad(ref, xs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [ProgressiveQualityFocalLoss, ProgressiveVarifocalLoss])
@pytest.mark.parametrize("loss_weight", [0.0, -1.0, float("nan")])
def test_loss_weight_must_be_positive(cls, loss_weight):
    with pytest.raises(ValueError, match="loss_weight must be > 0"):
        cls(loss_weight=loss_weight)


def test_pf_vfl_with_fixed_params_is_vfl():
    # delta=0, w=1.5 -> gamma_ad = 2, alpha_ad = 0.75: VFL's defaults.
    xs, qs = random_quality_levels(2)
    xs = [x.requires_grad_(True) for x in xs]
    loss = ProgressiveVarifocalLoss(delta=0.0, w=1.5)(xs, qs, 3.0)
    ref = sum(varifocal_loss(x, q, reduction="sum") for x, q in zip(xs, qs)) / 3.0
    torch.testing.assert_close(loss, ref)
    g1 = torch.autograd.grad(loss, xs)
    g2 = torch.autograd.grad(ref, xs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [ProgressiveQualityFocalLoss, ProgressiveVarifocalLoss])
def test_positives_are_targets_above_zero(cls):
    xs, qs = random_quality_levels(3)
    loss_fn = cls(delta=2.0)
    loss_fn(xs, qs, 1.0)
    for i, (x, q) in enumerate(zip(xs, qs)):
        # -log sigmoid(x) averaged over q > 0, unweighted by q.
        expected = F.softplus(-x[q > 0]).mean().clamp(0.0, 4.0)
        assert loss_fn.last_gamma[i].item() == pytest.approx(expected.item(), rel=1e-5)
        g, _ = progressive_focus_params(x, (q > 0).float(), delta=2.0)
        assert loss_fn.last_gamma[i].item() == pytest.approx(g.item(), rel=1e-5)


@pytest.mark.parametrize("cls", [ProgressiveQualityFocalLoss, ProgressiveVarifocalLoss])
def test_progressive_quality_edge_cases(cls):
    loss_fn = cls()
    # All invalid / no positives / empty.
    xs = [torch.randn(5, 3, requires_grad=True), torch.zeros(0, 3, requires_grad=True)]
    qs = [torch.zeros(5, 3), torch.zeros(0, 3)]
    loss = loss_fn(
        xs,
        qs,
        1.0,
        valid_per_level=[torch.zeros(5, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)],
    )
    loss.backward()
    assert loss.item() == 0.0 and (xs[0].grad == 0).all()
    assert loss_fn.last_gamma.tolist() == [2.0, 2.0]
    with pytest.raises(FloatingPointError, match=r"logits_per_level\[0\]"):
        loss_fn([torch.tensor([[float("inf")]])], [torch.zeros(1, 1)], 1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [quality_focal_loss, varifocal_loss])
def test_half_precision_finite(dtype, fn):
    torch.manual_seed(4)
    x = (torch.randn(40, 5) * 5).to(dtype).requires_grad_(True)
    q = torch.where(torch.rand(40, 5) < 0.2, torch.rand(40, 5), 0.0).to(dtype)
    loss = fn(x, q, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    torch.testing.assert_close(loss, fn(x.detach().float(), q.float(), reduction="sum"))
    xs = [x.detach().clone().requires_grad_(True)]
    pf = ProgressiveQualityFocalLoss()([xs[0]], [q], 2.0) + ProgressiveVarifocalLoss()(xs, [q], 2.0)
    pf.backward()
    assert torch.isfinite(pf) and torch.isfinite(xs[0].grad.float()).all()


@pytest.mark.parametrize("fn", [quality_focal_loss, varifocal_loss])
def test_functional_errors(fn):
    with pytest.raises(
        ValueError, match=r"score_targets has shape \(2, 3\).*logits has shape \(2, 4\)"
    ):
        fn(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(FloatingPointError, match="logits"):
        fn(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    assert fn(torch.zeros(0, 4), torch.zeros(0, 4), reduction="mean").item() == 0.0


def test_extreme_logits_give_finite_values_and_gradients():
    x = torch.tensor([[100.0, -100.0, 60.0, -60.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.9, 0.0, 0.0, 0.7, 0.5]])
    losses = [
        quality_focal_loss(x, q, reduction="sum"),
        varifocal_loss(x, q, reduction="sum"),
        ProgressiveQualityFocalLoss()([x], [q], 1.0),
        ProgressiveVarifocalLoss()([x], [q], 1.0),
    ]
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # VFL: x=60 with q=0 is confidently wrong: 0.75 * 1 * 60 dominates the sum.
    assert losses[1].item() == pytest.approx(
        0.75 * 60 + 0.9 * 10 + 0.7 * 0.7 * 60 + 0.5 * 0.693147, rel=1e-3
    )
