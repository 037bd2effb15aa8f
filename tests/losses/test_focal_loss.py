"""sigmoid_focal_loss (HPF Eq. 1) and the shared reduce_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpf.losses import reduce_loss, sigmoid_focal_loss
from hpf.losses.baselines import focal_terms


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_hand_computed_values():
    # Entry 1: y=1, x=0 -> p=0.5: FL = -0.25 * (1-0.5)^2 * log(0.5) = 0.0625 * 0.693147 = 0.0433217
    # Entry 2: y=0, x=2 -> p=sigmoid(2)=0.880797:
    #          FL = -(1-0.25) * 0.880797^2 * log(1-0.880797) = 0.75 * 0.775803 * 2.126928 = 1.237559
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p = sigmoid(2.0)
    expected = [0.25 * 0.5**2 * math.log(2), 0.75 * p**2 * -math.log(1 - p)]
    assert expected[0] == pytest.approx(0.0433217, abs=1e-6)
    assert expected[1] == pytest.approx(1.237559, abs=1e-5)
    out = sigmoid_focal_loss(logits, targets)
    torch.testing.assert_close(out, torch.tensor([expected]), rtol=1e-6, atol=1e-7)
    assert sigmoid_focal_loss(logits, targets, reduction="sum").item() == pytest.approx(
        sum(expected), rel=1e-6
    )
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(
        sum(expected) / 2, rel=1e-6
    )


def test_matches_eq1_in_float64_values_and_gradients():
    torch.manual_seed(0)
    x = (torch.randn(64, 7) * 6).double().requires_grad_(True)
    y = (torch.rand(64, 7) < 0.2).double()
    alpha, gamma = 0.3, 1.7
    p = torch.sigmoid(x)
    ref = torch.where(
        y == 1, -alpha * (1 - p) ** gamma * torch.log(p), -(1 - alpha) * p**gamma * torch.log(1 - p)
    )
    out = sigmoid_focal_loss(x.float(), y.float(), alpha=alpha, gamma=gamma)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)
    x32 = x.detach().float().requires_grad_(True)
    sigmoid_focal_loss(x32, y.float(), alpha=alpha, gamma=gamma, reduction="sum").backward()
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(x32.grad.double(), g_ref, rtol=1e-3, atol=1e-6)


def test_tensor_parameters_equal_floats_and_negative_alpha_disables_weighting():
    torch.manual_seed(1)
    x, y = torch.randn(10, 3), (torch.rand(10, 3) < 0.3).float()
    a = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0)
    b = sigmoid_focal_loss(x, y, alpha=torch.tensor(0.25), gamma=torch.tensor(2.0))
    torch.testing.assert_close(a, b)
    # gamma=0, alpha<0 is plain BCE.
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0), bce)


def test_extreme_logits_are_finite():
    x = torch.tensor([[-100.0, 100.0, 60.0, -60.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss = sigmoid_focal_loss(x, y, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # Confidently wrong entries dominate: ~0.25 * 100 + 0.75 * 100.
    assert loss.item() == pytest.approx(100.0, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_finite_and_close(dtype):
    torch.manual_seed(2)
    x, y = torch.randn(50, 8) * 4, (torch.rand(50, 8) < 0.1).float()
    xh = x.to(dtype).requires_grad_(True)
    loss = sigmoid_focal_loss(xh, y.to(dtype), reduction="sum")
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()
    ref = sigmoid_focal_loss(xh.detach().float(), y, reduction="sum")
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise(bad):
    x = torch.zeros(3, 2)
    x[1, 1] = bad
    with pytest.raises(FloatingPointError, match="logits"):
        sigmoid_focal_loss(x, torch.zeros(3, 2))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"targets has shape \(3, 4\).*logits has shape \(3, 5\)"):
        sigmoid_focal_loss(torch.zeros(3, 5), torch.zeros(3, 4))


def test_empty_inputs():
    x = torch.zeros(0, 80, requires_grad=True)
    y = torch.zeros(0, 80)
    assert sigmoid_focal_loss(x, y).shape == (0, 80)
    for reduction in ("sum", "mean"):
        loss = sigmoid_focal_loss(x, y, reduction=reduction)
        assert loss.item() == 0.0
        loss.backward()
    assert x.grad.shape == (0, 80)


def test_reduce_loss():
    loss = torch.tensor([1.0, 2.0, 6.0])
    assert reduce_loss(loss, "sum").item() == 9.0
    assert reduce_loss(loss, "mean").item() == 3.0
    assert reduce_loss(loss, "none") is loss
    assert reduce_loss(torch.zeros(0), "mean").item() == 0.0  # not NaN
    with pytest.raises(ValueError, match="reduction"):
        reduce_loss(loss, "avg")


@pytest.mark.parametrize(
    "alpha,gamma",
    [
        (0.25, 2.0),
        (torch.tensor(0.3), torch.tensor(1.7)),
        (-1, 0.0),
        (torch.tensor([[0.2], [0.4]]), torch.tensor([[1.6], [2.4]])),
    ],  # per-row (per-image) pairs
)
def test_hand_written_backward_passes_gradcheck(alpha, gamma):
    torch.manual_seed(3)
    x = (torch.randn(2, 5) * 4).double().requires_grad_(True)
    y = (torch.rand(2, 5) < 0.4).double()
    a = alpha.double() if torch.is_tensor(alpha) else alpha
    g = gamma.double() if torch.is_tensor(gamma) else gamma
    assert torch.autograd.gradcheck(lambda v: focal_terms(v, y, a, g), (x,))
