"""GHM-C / GHM-R (GHM paper Eq. 9-13, 17-19) against hand values and a plain loop version."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpf.losses import GHMCLoss, GHMRLoss


def unweighted_ghmr(**kwargs):
    """GHM-R without the official config's weight 10: Eq. 19 as printed."""
    return GHMRLoss(loss_weight=1.0, **kwargs)


def one_level(loss, inputs, targets, valid=None):
    """``loss`` on a pyramid of one level: the harmonised loss of one tensor (GHM-C does not use
    the normalizer)."""
    valid = None if valid is None else [valid]
    if isinstance(loss, GHMCLoss):
        return loss([inputs], [targets], 1.0, valid)
    return loss([inputs], [targets], valid)


def softplus(x):
    return math.log1p(math.exp(x))


class LoopHarmonizer:
    """Straightforward per-bin loop (the official algorithm), written for the test."""

    def __init__(self, bins, momentum, last_edge):
        self.bins, self.momentum = bins, momentum
        self.edges = torch.arange(bins + 1, dtype=torch.float32) / bins
        self.edges[-1] = last_edge
        self.acc = [0.0] * bins

    def weights(self, g, valid):
        total = max(int(valid.sum()), 1)
        weights = torch.zeros_like(g)
        nonempty = 0
        for i in range(self.bins):
            in_bin = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            count = int(in_bin.sum())
            if count == 0:
                continue
            nonempty += 1
            if self.momentum > 0:
                self.acc[i] = self.momentum * self.acc[i] + (1 - self.momentum) * count
                weights[in_bin] = total / self.acc[i]
            else:
                weights[in_bin] = total / count
        if nonempty:
            weights = weights / nonempty
        return weights, total


def loop_ghmc(ref, x, y, valid):
    g = (torch.sigmoid(x.detach()) - y).abs()
    w, total = ref.weights(g, valid)
    return (F.binary_cross_entropy_with_logits(x, y, reduction="none") * w).sum() / total


def loop_ghmr(ref, pred, target, valid, mu=0.02):
    d = pred - target
    root = torch.sqrt(d * d + mu * mu)
    w, total = ref.weights((d / root).abs().detach(), valid)
    return ((root - mu) * w).sum() / total


def test_ghmc_hand_computed_and_ema():
    # x = [0, -2, 2], y = 0: g = [0.5, 0.1192, 0.8808]; bins=2 -> bin0 {0.1192}, bin1 {0.5, 0.8808}
    # momentum 0: tot = 3, n = 2; w0 = 3/1/2 = 1.5, w1 = 3/2/2 = 0.75
    # BCE = [ln2, softplus(-2), softplus(2)] = [0.693147, 0.126928, 2.126928]
    # loss = (1.5*0.126928 + 0.75*(0.693147 + 2.126928)) / 3 = 0.768483
    x = torch.tensor([[0.0, -2.0, 2.0]])
    y = torch.zeros(1, 3)
    bce = [softplus(0.0), softplus(-2.0), softplus(2.0)]
    no_ema = GHMCLoss(bins=2, momentum=0.0)
    assert one_level(no_ema, x, y).item() == pytest.approx(0.768483, abs=1e-6)
    # momentum 0.75, call 1: acc = 0.25 * [1, 2] = [0.25, 0.5]
    #   w0 = 3/0.25/2 = 6, w1 = 3/0.5/2 = 3 -> 4x the momentum-0 loss = 3.073931
    ghm = GHMCLoss(bins=2, momentum=0.75)
    assert one_level(ghm, x, y).item() == pytest.approx(4 * 0.768483, abs=1e-5)
    # call 2: acc = 0.75*[0.25, 0.5] + 0.25*[1, 2] = [0.4375, 0.875]
    #   w0 = 3/0.4375/2 = 3.428571, w1 = 3/0.875/2 = 1.714286
    expected = (3 / 0.4375 / 2 * bce[1] + 3 / 0.875 / 2 * (bce[0] + bce[2])) / 3
    assert one_level(ghm, x, y).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(ghm.acc_sum, torch.tensor([0.4375, 0.875]))
    # A call whose samples all fall in bin1 leaves bin0's EMA count untouched (not decayed).
    one_level(ghm, torch.tensor([[2.0]]), torch.zeros(1, 1))
    torch.testing.assert_close(ghm.acc_sum, torch.tensor([0.4375, 0.75 * 0.875 + 0.25]))


def test_ghmr_hand_computed():
    # d = [0, 0.001, 1.0], mu = 0.02: g = |d|/sqrt(d^2+mu^2) = [0, 0.049938, 0.999800]
    # bins=10 -> bin0 has 2, bin9 has 1; n = 2, tot = 3: w = 3/2/2 = 0.75 and 3/1/2 = 1.5
    # ASL1 = sqrt(d^2+mu^2)-mu = [0, 0.0000249844, 0.980200]
    # loss = (0.75*(0 + 0.0000249844) + 1.5*0.980200) / 3 = 0.490106
    pred = torch.tensor([[0.0, 0.001, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    ghmr = unweighted_ghmr(mu=0.02, bins=10, momentum=0.0)
    loss = one_level(ghmr, pred, torch.zeros(1, 4), valid)
    assert loss.item() == pytest.approx(0.490106, abs=1e-6)


def test_ghmc_one_bin_no_momentum_is_bce_over_valid():
    torch.manual_seed(0)
    x, y = torch.randn(20, 6) * 3, (torch.rand(20, 6) < 0.2).float()
    valid = torch.rand(20) < 0.7
    loss = one_level(GHMCLoss(bins=1, momentum=0.0), x, y, valid)
    ref = F.binary_cross_entropy_with_logits(x[valid], y[valid])
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_matches_loop_over_iterations(momentum):
    gen = torch.Generator().manual_seed(1)
    module = GHMCLoss(bins=30, momentum=momentum)
    ref = LoopHarmonizer(30, momentum, 1.0 + 1e-6)
    for it in range(5):
        n = 200 + 37 * it
        x = (torch.randn(n, 8, generator=gen) * (1 + it)).requires_grad_(True)
        y = (torch.rand(n, 8, generator=gen) < 0.1).float()
        valid = torch.rand(n, generator=gen) < 0.8
        x_ref = x.detach().clone().requires_grad_(True)
        loss = one_level(module, x, y, valid)
        loss_ref = loop_ghmc(ref, x_ref, y, valid[:, None].expand_as(y))
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-7)
        loss.backward()
        loss_ref.backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(module.acc_sum, torch.tensor(ref.acc), rtol=1e-5, atol=1e-6)
    if momentum > 0:
        assert (module.acc_sum > 0).sum() > 10  # the EMA state was really exercised


def test_ghmr_matches_loop_over_iterations():
    gen = torch.Generator().manual_seed(2)
    module = unweighted_ghmr(mu=0.02, bins=10, momentum=0.7)
    ref = LoopHarmonizer(10, 0.7, 1e3)
    for it in range(5):
        n = 30 + 11 * it
        pred = (torch.randn(n, 4, generator=gen) * 0.1 * (it + 1)).requires_grad_(True)
        target = torch.randn(n, 4, generator=gen) * 0.05
        valid = torch.rand(n, 4, generator=gen) < 0.9
        pred_ref = pred.detach().clone().requires_grad_(True)
        loss = one_level(module, pred, target, valid)
        loss_ref = loop_ghmr(ref, pred_ref, target, valid)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-7)
        loss.backward()
        loss_ref.backward()
        torch.testing.assert_close(pred.grad, pred_ref.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(module.acc_sum, torch.tensor(ref.acc), rtol=1e-5, atol=1e-6)


def test_gradient_norm_one_lands_in_last_bin():
    # sigmoid(-200) = 0 with y = 1 gives g = 1 exactly; huge deltas give g ~ 1 for GHM-R.
    ghmc = GHMCLoss(bins=30, momentum=0.5)
    one_level(ghmc, torch.tensor([[-200.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert ghmc.acc_sum[-1].item() == pytest.approx(
        0.5
    ) and ghmc.acc_sum.sum().item() == pytest.approx(1.0)
    ghmr = unweighted_ghmr(momentum=0.5)
    one_level(ghmr, torch.tensor([[1e6, 0.0]]), torch.zeros(1, 2))
    assert ghmr.acc_sum[-1].item() == pytest.approx(
        0.5
    ) and ghmr.acc_sum.sum().item() == pytest.approx(1.0)


def test_ema_state_is_in_state_dict_and_resumes():
    torch.manual_seed(3)
    batches = [(torch.randn(50, 4) * 3, (torch.rand(50, 4) < 0.2).float()) for _ in range(4)]
    a = GHMCLoss()
    for x, y in batches[:2]:
        one_level(a, x, y)
    state = a.state_dict()
    assert set(state) == {"acc_sum"}
    b = GHMCLoss()
    b.load_state_dict(state)
    for x, y in batches[2:]:
        torch.testing.assert_close(one_level(a, x, y), one_level(b, x, y))
    torch.testing.assert_close(a.acc_sum, b.acc_sum)


@pytest.mark.parametrize("cls", [GHMCLoss, unweighted_ghmr])
def test_all_invalid_and_empty(cls):
    module = cls()
    x = torch.randn(6, 4, requires_grad=True)
    loss = one_level(module, x, torch.zeros(6, 4), torch.zeros(6, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all() and (module.acc_sum == 0).all()
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = one_level(module, empty, torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_finite(dtype):
    torch.manual_seed(4)
    x = (torch.randn(40, 6) * 6).to(dtype).requires_grad_(True)
    y = (torch.rand(40, 6) < 0.2).to(dtype)
    loss = one_level(GHMCLoss(), x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    torch.testing.assert_close(loss, one_level(GHMCLoss(), x.detach().float(), y.float()))
    p = (torch.randn(10, 4) * 0.3).to(dtype).requires_grad_(True)
    loss = one_level(unweighted_ghmr(), p, torch.zeros(10, 4, dtype=dtype))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad.float()).all()


def test_errors():
    with pytest.raises(FloatingPointError, match="logits"):
        one_level(GHMCLoss(), torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(FloatingPointError, match="pred"):
        one_level(unweighted_ghmr(), torch.tensor([[float("inf")]]), torch.zeros(1, 1))
    with pytest.raises(FloatingPointError, match="target"):
        one_level(unweighted_ghmr(), torch.zeros(1, 1), torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match=r"targets has shape \(3, 2\).*logits has shape \(3, 4\)"):
        one_level(GHMCLoss(), torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"target has shape \(3, 2\).*pred has shape \(3, 4\)"):
        one_level(unweighted_ghmr(), torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"valid has shape \(5,\)"):
        one_level(GHMCLoss(), torch.zeros(3, 4), torch.zeros(3, 4), torch.ones(5).bool())
    with pytest.raises(ValueError, match="bins"):
        GHMCLoss(bins=0)
    with pytest.raises(ValueError, match="momentum"):
        unweighted_ghmr(momentum=1.0)


@pytest.mark.parametrize("cls", [GHMCLoss, unweighted_ghmr])
@pytest.mark.parametrize("bins", [10, 11, 22, 23, 29, 30, 41, 47])
def test_bin_index_is_exact_next_to_every_edge(cls, bins):
    # Loop semantics: edges[j] <= g < edges[j+1] with float32 edges as in the official code.
    # floor(g * bins) alone is one off for some bin counts (e.g. 11 too high, 23 too low) within
    # a few ulps of an edge; check every float within 64 ulps of every inner edge.
    module = cls(bins=bins)
    edge_bits = module.edges[1:-1].view(torch.int32)
    g = (edge_bits[:, None] + torch.arange(-64, 65, dtype=torch.int32)).view(torch.float32)
    g = torch.cat([g.reshape(-1), torch.tensor([0.0, 1.0]), torch.rand(1000)])
    expected = torch.bucketize(g, module.edges, right=True) - 1
    torch.testing.assert_close(module.bin_index(g), expected, rtol=0, atol=0)
