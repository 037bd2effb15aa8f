"""Sampling-Free pieces: guided loss scaling (Eq. 7-8), optimal prior (Eq. 9-10),
adaptive threshold (Table 2) and the CE classification loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpf.losses import (
    GuidedLossScale,
    adaptive_threshold,
    guided_loss_scale,
    optimal_prior,
    prior_bias,
    sampling_free_ce_loss,
)


def losses(w_cls=2.0, w_reg=0.5):
    """cls = w_cls * sum(theta^2), reg = w_reg * sum(theta) at theta = [1, 2] -> 10 and 1.5."""
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    return theta, w_cls * (theta**2).sum(), w_reg * theta.sum()


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_guided_scale_value_is_reg_and_gradient_is_scaled_cls(factor):
    theta, cls, reg = losses()
    scaled = guided_loss_scale(cls, reg, factor=factor)
    # value: factor * (1.5 / 10) * 10 = factor * 1.5
    assert scaled.item() == pytest.approx(factor * reg.item())
    (grad,) = torch.autograd.grad(scaled, theta)
    # d cls / d theta = 4 * theta = [4, 8]; times the constant ratio factor * 0.15
    torch.testing.assert_close(grad, factor * 0.15 * torch.tensor([4.0, 8.0]))


def test_guided_scale_zero_cls_and_errors():
    theta = torch.tensor([0.0], requires_grad=True)
    scaled = guided_loss_scale((theta**2).sum(), torch.tensor(1.0))
    scaled.backward()
    assert scaled.item() == 0.0 and torch.isfinite(theta.grad).all()
    with pytest.raises(ValueError, match=r"cls_loss must be a scalar tensor, got \(2,\)"):
        guided_loss_scale(torch.ones(2), torch.tensor(1.0))
    with pytest.raises(ValueError, match="reg_loss"):
        guided_loss_scale(torch.tensor(1.0), 1.0)


def test_module_without_freezing_recomputes_each_call():
    module = GuidedLossScale(factor=2.0)
    for w_reg in (0.5, 1.0, 3.0):
        _, cls, reg = losses(w_reg=w_reg)
        assert module.scale(cls, reg).item() == pytest.approx(2.0 * reg.item())
    assert module.ratio.item() == pytest.approx(0.9)  # reg = 3 * (1 + 2) = 9, cls = 10
    assert int(module.num_calls) == 3 and not module.frozen


def test_module_freezes_ratio_at_call_k_and_checkpoint_keeps_it():
    module = GuidedLossScale(freeze_after=2)
    _, cls, reg = losses(w_reg=0.5)  # ratio 0.15
    assert module.scale(cls, reg).item() == pytest.approx(1.5)
    _, cls, reg = losses(w_reg=1.0)  # call 2: ratio 3 / 10 = 0.3, frozen now
    assert module.scale(cls, reg).item() == pytest.approx(3.0)
    assert module.frozen
    theta, cls, reg = losses(w_cls=1.0, w_reg=5.0)  # cls = 5, reg = 15: ratio would be 3
    out = module.scale(cls, reg)
    assert out.item() == pytest.approx(0.3 * 5.0)  # frozen 0.3, not 3
    (grad,) = torch.autograd.grad(out, theta)
    torch.testing.assert_close(grad, 0.3 * 2 * theta.detach())
    # The frozen ratio and the call count travel in the state dict.
    state = module.state_dict()
    assert set(state) == {"ratio", "num_calls"}
    fresh = GuidedLossScale(freeze_after=2)
    fresh.load_state_dict(state)
    assert fresh.frozen and fresh.scale(cls, reg).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="freeze_after"):
        GuidedLossScale(freeze_after=0)
    for factor in (0, -2.0, "2"):
        with pytest.raises(ValueError, match="factor"):
            GuidedLossScale(factor=factor)


def test_optimal_prior_and_bias():
    # Paper: N / N_f ~ 1e3, C = 80 -> pi = 1 / (1e3 * 80) = 1.25e-5
    pi = optimal_prior(100, 100_000, 80)
    assert pi == pytest.approx(1.25e-5)
    # Eq. 10: b = -log((1 - pi) / pi) = -log(N C / N_f - 1) = -log(79999) = -11.289770
    assert prior_bias(pi) == pytest.approx(-math.log(79_999), rel=1e-9)
    assert prior_bias(0.01) == pytest.approx(-math.log(99))
    assert torch.sigmoid(torch.tensor(prior_bias(pi), dtype=torch.float64)).item() == pytest.approx(
        pi
    )
    assert prior_bias(torch.tensor(0.01)).item() == pytest.approx(-math.log(99), rel=1e-6)

    # pi minimises L_CE(pi) = -(N_f log pi + (N C - N_f) log(1 - pi)), so Eq. 9 is zero there.
    def ce(p, nf=100, n=100_000, c=80):
        return -(nf * math.log(p) + (n * c - nf) * math.log(1 - p))

    assert ce(pi) < ce(pi * 1.05) and ce(pi) < ce(pi * 0.95)
    with pytest.raises(ValueError, match="num_foreground"):
        optimal_prior(0, 100, 80)
    with pytest.raises(ValueError, match="num_total"):
        optimal_prior(1, 0, 80)
    with pytest.raises(ValueError, match="pi"):
        prior_bias(1.0)


def test_adaptive_threshold():
    assert adaptive_threshold(50, 1000) == pytest.approx(0.05)
    assert adaptive_threshold(torch.tensor(3.0), torch.tensor(12.0)).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="num_total"):
        adaptive_threshold(1, 0)


def test_sampling_free_ce_hand_computed():
    # Row 0 positive (class 0) with x = 0: ln2 = 0.693147;
    #   its class 1, x = ln3 (p = 0.75): -ln(1 - 0.75) = 1.386294
    # Row 1 negative with x = 0, 0: 2 * ln2 = 1.386294
    # sum = 3.465736, one positive -> 3.465736
    x = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert sampling_free_ce_loss(x, y).item() == pytest.approx(3.465736, abs=1e-6)
    assert sampling_free_ce_loss(x, y, normalizer=2.0).item() == pytest.approx(
        3.465736 / 2, abs=1e-6
    )
    # Row 1 ignored: 0.693147 + 1.386294 = 2.079442
    valid = torch.tensor([True, False])
    assert sampling_free_ce_loss(x, y, valid=valid).item() == pytest.approx(2.079442, abs=1e-6)


def test_sampling_free_ce_matches_bce_and_edge_cases():
    torch.manual_seed(0)
    x, y = torch.randn(30, 5) * 3, (torch.rand(30, 5) < 0.1).float()
    ref = F.binary_cross_entropy_with_logits(x, y, reduction="sum") / y.sum().clamp_min(1)
    torch.testing.assert_close(sampling_free_ce_loss(x, y), ref)
    # No positives: normaliser 1; all invalid: 0.
    assert sampling_free_ce_loss(x, torch.zeros_like(y)).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(x, torch.zeros_like(y), reduction="sum").item(), rel=1e-6
    )
    assert sampling_free_ce_loss(x, y, valid=torch.zeros(30, dtype=torch.bool)).item() == 0.0
    assert sampling_free_ce_loss(torch.zeros(0, 5), torch.zeros(0, 5)).item() == 0.0
    for dtype in (torch.float16, torch.bfloat16):
        xh = (x * 4).to(dtype).requires_grad_(True)
        loss = sampling_free_ce_loss(xh, y.to(dtype))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(xh.grad.float()).all()
    with pytest.raises(FloatingPointError, match="logits"):
        sampling_free_ce_loss(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(
        ValueError, match=r"targets has shape \(30, 4\).*logits has shape \(30, 5\)"
    ):
        sampling_free_ce_loss(x, y[:, :4])
    with pytest.raises(ValueError, match="normalizer"):
        sampling_free_ce_loss(x, y, normalizer=0)
