"""The four forms of Sampling-Free guided loss scaling: hand values of one step, analytic
gradients of the learned weights, freezing and the errors."""

import math

import pytest
import torch

from hpf.losses import GuidedLossScale


def loss_dict():
    """theta = [1, 2]: cls = 2 sum(theta^2) = 10, box = sum(theta) / 2 = 1.5, ctr = sum(theta) / 3 = 1."""
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = {"loss_cls": 2 * (theta**2).sum(), "loss_box": theta.sum() / 2, "loss_ctr": theta.sum() / 3}
    return theta, losses


def test_plain_hand_values():
    theta, losses = loss_dict()
    out = GuidedLossScale(factor=2.0)(losses, "loss_cls", "loss_box")
    assert set(out) == {"loss_cls", "loss_box", "loss_ctr"}
    # 2 * (1.5 / 10) * 10 = 3; the other losses unchanged
    assert out["loss_cls"].item() == pytest.approx(3.0)
    assert out["loss_box"] is losses["loss_box"] and out["loss_ctr"] is losses["loss_ctr"]
    (grad,) = torch.autograd.grad(out["loss_cls"], theta)
    torch.testing.assert_close(grad, 0.3 * torch.tensor([4.0, 8.0]))  # d cls = 4 theta


def test_plain_guided_by_the_mean_of_the_other_losses():
    _, losses = loss_dict()
    out = GuidedLossScale(guide="mean")(losses, "loss_cls", "loss_box")
    assert out["loss_cls"].item() == pytest.approx((1.5 + 1.0) / 2)


def test_constant_weight_hand_values():
    theta, losses = loss_dict()
    module = GuidedLossScale(factor=0.1, mode="constant")
    out = module(losses, "loss_cls", "loss_box")
    assert out["loss_cls"].item() == pytest.approx(1.0)
    (grad,) = torch.autograd.grad(out["loss_cls"], theta)
    torch.testing.assert_close(grad, 0.1 * torch.tensor([4.0, 8.0]))
    assert module.metrics() == {} and int(module.num_calls) == 0


def test_learned_scale_hand_values_and_delta_gradient():
    theta, losses = loss_dict()
    module = GuidedLossScale(mode="learned_scale")
    assert [n for n, _ in module.named_parameters()] == ["delta"]
    # At initialisation delta = 1: the plain value and a zero extra loss.
    out = module(losses, "loss_cls", "loss_box")
    assert out["loss_cls"].item() == pytest.approx(1.5)
    assert out["loss_cls_balance"].item() == pytest.approx(0.0)
    with torch.no_grad():
        module.delta.fill_(2.0)
    theta, losses = loss_dict()
    out = module(losses, "loss_cls", "loss_box")
    # delta^2 r L_cls = 4 * 0.15 * 10 = 6; -log delta^2 = -log 4
    assert out["loss_cls"].item() == pytest.approx(6.0)
    assert out["loss_cls_balance"].item() == pytest.approx(-math.log(4.0))
    total = sum(out.values())
    d_delta, d_theta = torch.autograd.grad(total, [module.delta, theta])
    # d/d delta (delta^2 L' - log delta^2) = 2 delta L' - 2 / delta, L' = r L_cls = 1.5
    assert d_delta.item() == pytest.approx(2 * 2.0 * 1.5 - 2 / 2.0)
    # theta: delta^2 r d cls + d box + d ctr = 4 * 0.15 * 4 theta + 1/2 + 1/3
    torch.testing.assert_close(d_theta, 0.6 * 4 * theta.detach() + 0.5 + 1 / 3)
    assert module.metrics() == {"guided_ratio": pytest.approx(0.15), "delta_sq": 4.0}


def test_learned_scale_moves_delta_sq_to_the_inverse_scaled_cls_loss():
    # With L' fixed, gradient descent on delta^2 L' - log delta^2 converges to 1 / L'.
    module = GuidedLossScale(mode="learned_scale")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(400):
        _, losses = loss_dict()  # L' = 1.5 every step
        loss = sum(module(losses, "loss_cls", "loss_box").values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert module.delta.item() ** 2 == pytest.approx(1 / 1.5, rel=1e-3)


def test_guided_loss_hand_values_and_sigma_gradients():
    theta, losses = loss_dict()
    module = GuidedLossScale(mode="guided_loss", num_losses=3)
    assert module.freeze_after == 100 and module.guide == "mean"
    with torch.no_grad():
        module.sigmas.copy_(torch.tensor([1.0, 2.0, 0.5]))
    out = module(losses, "loss_cls", "loss_box")
    # r = mean(1.5, 1) / 10 = 0.125 -> cls 1.25; then L_i / (2 sigma_i^2); + log(1 * 2 * 0.5)
    assert out["loss_cls"].item() == pytest.approx(1.25 / 2)
    assert out["loss_box"].item() == pytest.approx(1.5 / 8)
    assert out["loss_ctr"].item() == pytest.approx(1.0 / 0.5)
    assert out["loss_cls_balance"].item() == pytest.approx(0.0, abs=1e-7)
    (d_sigma,) = torch.autograd.grad(sum(out.values()), module.sigmas)
    # d/d sigma_i (L_i / (2 sigma_i^2) + log sigma_i) = -L_i / sigma_i^3 + 1 / sigma_i
    expected = [-1.25 / 1 + 1, -1.5 / 8 + 1 / 2, -1.0 / 0.125 + 1 / 0.5]
    torch.testing.assert_close(d_sigma, torch.tensor(expected))
    assert module.metrics() == {
        "guided_ratio": pytest.approx(0.125), "sigma_sq/loss_cls": 1.0,
        "sigma_sq/loss_box": 4.0, "sigma_sq/loss_ctr": 0.25,
    }


def test_guided_loss_freezes_the_ratio_and_the_state_dict_keeps_it():
    module = GuidedLossScale(mode="guided_loss", num_losses=3, freeze_after=2)
    _, losses = loss_dict()
    module(losses, "loss_cls", "loss_box")
    _, losses = loss_dict()
    losses["loss_box"] = losses["loss_box"] * 3  # call 2: r = (4.5 + 1) / 2 / 10 = 0.275
    module(losses, "loss_cls", "loss_box")
    assert module.frozen and module.ratio.item() == pytest.approx(0.275)
    _, losses = loss_dict()
    out = module(losses, "loss_cls", "loss_box")  # r would be 0.125 now
    assert out["loss_cls"].item() == pytest.approx(0.275 * 10 / 2)
    state = module.state_dict()
    assert set(state) == {"ratio", "num_calls", "sigmas"}
    fresh = GuidedLossScale(mode="guided_loss", num_losses=3, freeze_after=2)
    fresh.load_state_dict(state)
    _, losses = loss_dict()
    assert fresh.frozen and fresh(losses, "loss_cls", "loss_box")["loss_cls"].item() == pytest.approx(1.375)


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="mode must be one of"):
        GuidedLossScale(mode="uncertainty")
    with pytest.raises(ValueError, match="num_losses is needed by mode='guided_loss'"):
        GuidedLossScale(mode="guided_loss")
    with pytest.raises(ValueError, match="num_losses is needed by mode='guided_loss' and only"):
        GuidedLossScale(mode="plain", num_losses=2)
    with pytest.raises(ValueError, match="guide must be"):
        GuidedLossScale(guide="sum")
    _, losses = loss_dict()
    with pytest.raises(KeyError, match="no loss named 'loss_box_reg'"):
        GuidedLossScale()(losses, "loss_cls", "loss_box_reg")
    with pytest.raises(ValueError, match=r"num_losses=2\) got 3 losses"):
        GuidedLossScale(mode="guided_loss", num_losses=2)(losses, "loss_cls", "loss_box")
    with pytest.raises(ValueError, match="scale\\(\\) serves modes"):
        GuidedLossScale(mode="learned_scale").scale(torch.tensor(1.0), torch.tensor(1.0))
