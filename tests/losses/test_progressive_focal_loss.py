"""progressive_focus_params (HPF Eq. 3-4) and ProgressiveFocalLoss (Eq. 2, 5)."""

import math

import pytest
import torch

from hpf.losses import ProgressiveFocalLoss, progressive_focus_params, sigmoid_focal_loss


def logit(p):
    return math.log(p / (1 - p))


def random_levels(seed, sizes=(40, 20, 6), classes=5, pos_rate=0.05):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, classes, generator=gen) * 2 for n in sizes]
    ts = [(torch.rand(n, classes, generator=gen) < pos_rate).float() for n in sizes]
    return xs, ts


def test_params_hand_computed_both_estimators():
    # Positives have p = e^-1.6 and e^-2.2, a negative has p = 0.5 (ignored by the statistic).
    x = torch.tensor([[logit(math.exp(-1.6)), 0.0], [0.0, logit(math.exp(-2.2))]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # mean_log: (1.6 + 2.2) / 2 = 1.9 ; alpha = 0.5 / 1.9 = 0.263158
    g, a = progressive_focus_params(x, y)
    assert g.item() == pytest.approx(1.9, abs=1e-5) and a.item() == pytest.approx(
        0.263158, abs=1e-5
    )
    # log_mean: -log((0.201897 + 0.110803) / 2) = -log(0.156350) = 1.855659 ; alpha = 0.269446
    g, a = progressive_focus_params(x, y, estimator="log_mean")
    assert g.item() == pytest.approx(1.855659, abs=1e-5)
    assert a.item() == pytest.approx(0.5 / 1.855659, abs=1e-6)


def test_params_clamp_and_no_positives():
    # -log sigmoid(-3) = 3.048587 -> clamped to gamma + delta = 2.5, alpha = 0.5 / 2.5 = 0.2
    g, a = progressive_focus_params(torch.tensor([[-3.0]]), torch.tensor([[1.0]]))
    assert (g.item(), a.item()) == pytest.approx((2.5, 0.2))
    # -log sigmoid(5) = 0.006715 -> clamped to gamma - delta = 1.5 (delta=0.5)
    g, _ = progressive_focus_params(torch.tensor([[5.0]]), torch.tensor([[1.0]]))
    assert g.item() == pytest.approx(1.5)
    # No positives: gamma_ad = gamma, alpha_ad = w / gamma.
    g, a = progressive_focus_params(torch.randn(4, 3), torch.zeros(4, 3), gamma=1.8, w=0.6)
    assert (g.item(), a.item()) == pytest.approx((1.8, 0.6 / 1.8))
    g, a = progressive_focus_params(torch.zeros(0, 3), torch.zeros(0, 3))
    assert (g.item(), a.item()) == pytest.approx((2.0, 0.25))


def test_params_carry_no_gradient():
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.zeros(6, 3)
    y[0, 1] = 1
    g, a = progressive_focus_params(x, y)
    assert g.dim() == 0 and a.dim() == 0
    assert not g.requires_grad and not a.requires_grad and g.grad_fn is None


def test_module_hand_computed_level_and_all():
    # Level 0: positive p = e^-2 (-log p = 2) and a negative x = 0 -> gamma_0 = 2, alpha_0 = 0.25
    #   0.25 * (1 - e^-2)^2 * 2 = 0.25 * 0.747645 * 2 = 0.373823 ; 0.75 * 0.5^2 * ln2 = 0.129965
    # Level 1: positive p = e^-1 (-log p = 1 -> clamped 1.5), alpha_1 = 0.5 / 1.5 = 1/3
    #   (1/3) * (1 - e^-1)^1.5 * 1 = (1/3) * 0.502574 = 0.167525 ; (2/3) * 0.5^1.5 * ln2 = 0.163376
    # level: (0.373823 + 0.129965 + 0.167525 + 0.163376) / normalizer 2 = 0.417344
    xs = [
        torch.tensor([[logit(math.exp(-2.0)), 0.0]]),
        torch.tensor([[logit(math.exp(-1.0)), 0.0]]),
    ]
    ts = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])]
    loss_fn = ProgressiveFocalLoss()
    assert loss_fn(xs, ts, 2.0).item() == pytest.approx(0.417344, abs=1e-5)
    torch.testing.assert_close(loss_fn.last_gamma, torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(loss_fn.last_alpha, torch.tensor([0.25, 1 / 3]))
    # all: gamma = mean(2, 1) = 1.5, alpha = 1/3 on both levels; level 0 positive becomes
    #   (1/3) * (1 - e^-2)^1.5 * 2 = (1/3) * 0.804029 * 2 = 0.536019 and its negative 0.163376
    #   (0.536019 + 0.163376 + 0.167525 + 0.163376) / 2 = 0.515148
    loss_fn = ProgressiveFocalLoss(sampling="all")
    assert loss_fn(xs, ts, 2.0).item() == pytest.approx(0.515148, abs=1e-5)
    torch.testing.assert_close(loss_fn.last_gamma, torch.tensor([1.5, 1.5]))


def test_delta_zero_equals_focal_loss_values_and_gradients():
    xs, ts = random_levels(0)
    xs = [x.requires_grad_(True) for x in xs]
    loss = ProgressiveFocalLoss(gamma=2.0, delta=0.0, w=0.5)(xs, ts, 7.0)
    loss.backward()
    cat_x = torch.cat([x.detach() for x in xs]).requires_grad_(True)
    ref = sigmoid_focal_loss(cat_x, torch.cat(ts), alpha=0.25, gamma=2.0, reduction="sum") / 7.0
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.cat([x.grad for x in xs]), cat_x.grad)
    # A tensor normalizer (e.g. an all-reduced count) works the same.
    loss_t = ProgressiveFocalLoss(gamma=2.0, delta=0.0, w=0.5)(xs, ts, torch.tensor(7.0))
    torch.testing.assert_close(loss_t, ref)


def test_single_level_level_sampling_equals_all():
    xs, ts = random_levels(1, sizes=(50,), pos_rate=0.1)
    a = ProgressiveFocalLoss(sampling="level")(xs, ts, 3.0)
    b = ProgressiveFocalLoss(sampling="all")(xs, ts, 3.0)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("estimator", ["mean_log", "log_mean"])
def test_level_loss_is_focal_with_each_levels_params_and_no_gradient_through_them(estimator):
    xs, ts = random_levels(2, pos_rate=0.15)
    xs = [x.requires_grad_(True) for x in xs]
    loss_fn = ProgressiveFocalLoss(delta=1.0, estimator=estimator)
    loss = loss_fn(xs, ts, 5.0)
    loss.backward()
    ref_total = 0.0
    for i, (x, t) in enumerate(zip(xs, ts)):
        g, a = progressive_focus_params(x, t, delta=1.0, estimator=estimator)
        assert loss_fn.last_gamma[i].item() == pytest.approx(g.item(), rel=1e-6)
        # gamma/alpha as constants: the gradient must match exactly.
        xc = x.detach().clone().requires_grad_(True)
        part = sigmoid_focal_loss(xc, t, alpha=a.item(), gamma=g.item(), reduction="sum") / 5.0
        part.backward()
        torch.testing.assert_close(x.grad, xc.grad)
        ref_total += part.item()
    assert loss.item() == pytest.approx(ref_total, rel=1e-5)
    assert loss_fn.last_gamma.requires_grad is False
    assert len(set(loss_fn.last_gamma.tolist())) > 1  # the levels really differ here


def test_all_sampling_uses_the_concatenation():
    xs, ts = random_levels(3, pos_rate=0.15)
    loss_fn = ProgressiveFocalLoss(sampling="all", delta=1.0)
    loss = loss_fn(xs, ts, 4.0)
    g, a = progressive_focus_params(torch.cat(xs), torch.cat(ts), delta=1.0)
    torch.testing.assert_close(loss_fn.last_gamma, g.expand(3))
    ref = sigmoid_focal_loss(torch.cat(xs), torch.cat(ts), alpha=a, gamma=g, reduction="sum") / 4.0
    torch.testing.assert_close(loss, ref)


def test_image_sampling_one_pair_per_image_over_all_levels():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(2, n, 4, generator=gen) * 2 for n in (12, 5)]
    ts = [(torch.rand(2, n, 4, generator=gen) < 0.2).float() for n in (12, 5)]
    loss_fn = ProgressiveFocalLoss(sampling="image", delta=1.0)
    loss = loss_fn(xs, ts, 6.0)
    assert loss_fn.last_gamma.shape == (2, 2)  # [levels, images]
    ref = 0.0
    for b in range(2):
        g, a = progressive_focus_params(
            torch.cat([x[b] for x in xs]), torch.cat([t[b] for t in ts]), delta=1.0
        )
        assert loss_fn.last_gamma[:, b].tolist() == pytest.approx([g.item()] * 2, rel=1e-6)
        for x, t in zip(xs, ts):
            ref = ref + sigmoid_focal_loss(x[b], t[b], alpha=a, gamma=g, reduction="sum")
    torch.testing.assert_close(loss, ref / 6.0)
    with pytest.raises(ValueError, match=r"sampling='image'.*logits_per_level\[0\]"):
        loss_fn([x.flatten(0, 1) for x in xs], [t.flatten(0, 1) for t in ts], 6.0)


def test_three_dim_levels_equal_flattened_levels():
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(2, n, 4, generator=gen) for n in (8, 3)]
    ts = [(torch.rand(2, n, 4, generator=gen) < 0.3).float() for n in (8, 3)]
    loss_fn = ProgressiveFocalLoss()
    a = loss_fn(xs, ts, 2.0)
    b = loss_fn([x.flatten(0, 1) for x in xs], [t.flatten(0, 1) for t in ts], 2.0)
    torch.testing.assert_close(a, b)


def test_invalid_samples_contribute_nothing():
    xs, ts = random_levels(6, pos_rate=0.2)
    keep = [torch.arange(x.shape[0]) % 3 != 0 for x in xs]
    loss_fn = ProgressiveFocalLoss(delta=1.0)
    masked = loss_fn(xs, ts, 5.0, valid_per_level=keep)
    gamma_masked = loss_fn.last_gamma
    dropped = loss_fn([x[k] for x, k in zip(xs, keep)], [t[k] for t, k in zip(ts, keep)], 5.0)
    torch.testing.assert_close(masked, dropped)
    torch.testing.assert_close(gamma_masked, loss_fn.last_gamma)
    # A [N, C] mask works entry-wise too.
    entry_keep = [k[:, None].expand_as(x) for k, x in zip(keep, xs)]
    torch.testing.assert_close(loss_fn(xs, ts, 5.0, valid_per_level=entry_keep), dropped)


def test_level_without_positives_empty_level_all_invalid_and_empty():
    xs = [torch.randn(10, 3), torch.randn(0, 3), torch.randn(4, 3)]
    ts = [torch.zeros(10, 3), torch.zeros(0, 3), torch.zeros(4, 3)]
    ts[0][2, 1] = 1
    loss_fn = ProgressiveFocalLoss(delta=1.0)
    loss = loss_fn(xs, ts, 1.0)
    assert torch.isfinite(loss)
    assert loss_fn.last_gamma[1:].tolist() == [2.0, 2.0]  # no positives -> gamma
    # All invalid: zero loss, zero gradient, no positives anywhere.
    xg = [x.clone().requires_grad_(True) for x in xs]
    loss = loss_fn(
        xg, ts, 1.0, valid_per_level=[torch.zeros(x.shape[0], dtype=torch.bool) for x in xs]
    )
    loss.backward()
    assert loss.item() == 0.0 and all((x.grad == 0).all() for x in xg)
    assert loss_fn.last_gamma.tolist() == [2.0, 2.0, 2.0]
    # Only empty tensors.
    empty = [torch.zeros(0, 3, requires_grad=True) for _ in range(2)]
    loss = loss_fn(empty, [torch.zeros(0, 3)] * 2, 1.0)
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_finite(dtype):
    xs, ts = random_levels(7, pos_rate=0.2)
    xh = [(x * 4).to(dtype).requires_grad_(True) for x in xs]
    loss_fn = ProgressiveFocalLoss()
    loss = loss_fn(xh, [t.to(dtype) for t in ts], 3.0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad.float()).all() for x in xh)
    torch.testing.assert_close(loss, loss_fn([x.detach().float() for x in xh], ts, 3.0))


def test_non_finite_logits_raise_naming_the_level():
    xs, ts = random_levels(8)
    xs[1][3, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"logits_per_level\[1\]"):
        ProgressiveFocalLoss()(xs, ts, 1.0)
    xs[1][3, 2] = float("inf")
    with pytest.raises(FloatingPointError, match=r"logits_per_level\[1\]"):
        ProgressiveFocalLoss()(xs, ts, 1.0)


def test_bad_inputs_get_clear_errors():
    xs, ts = random_levels(9)
    loss_fn = ProgressiveFocalLoss()
    with pytest.raises(ValueError, match=r"targets_per_level\[2\] has shape \(6, 4\).*\(6, 5\)"):
        loss_fn(xs, ts[:2] + [ts[2][:, :4]], 1.0)
    with pytest.raises(ValueError, match="targets_per_level has 2 levels"):
        loss_fn(xs, ts[:2], 1.0)
    with pytest.raises(ValueError, match=r"valid_per_level\[0\] has shape \(7,\)"):
        loss_fn(xs, ts, 1.0, valid_per_level=[torch.ones(7, dtype=torch.bool)] * 3)
    with pytest.raises(TypeError, match="bool"):
        loss_fn(xs, ts, 1.0, valid_per_level=[torch.ones(x.shape[0]) for x in xs])
    with pytest.raises(ValueError, match="normalizer"):
        loss_fn(xs, ts, 0)
    with pytest.raises(ValueError, match="empty"):
        loss_fn([], [], 1.0)
    with pytest.raises(ValueError, match="sampling"):
        ProgressiveFocalLoss(sampling="sample")
    with pytest.raises(ValueError, match="estimator"):
        ProgressiveFocalLoss(estimator="mean")
    with pytest.raises(ValueError, match="targets has shape"):
        progressive_focus_params(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(FloatingPointError, match="logits"):
        progressive_focus_params(torch.full((2, 3), float("nan")), torch.zeros(2, 3))


def test_mixed_per_anchor_and_per_entry_masks():
    xs, ts = random_levels(10, pos_rate=0.2)
    gen = torch.Generator().manual_seed(11)
    masks = [
        torch.rand(xs[0].shape, generator=gen) < 0.7,
        torch.rand(20, generator=gen) < 0.7,
        torch.ones(6, dtype=torch.bool),
    ]
    loss_fn = ProgressiveFocalLoss(delta=1.0)
    loss = loss_fn(xs, ts, 3.0, valid_per_level=masks)
    full = [m if m.dim() == 2 else m[:, None].expand_as(x) for m, x in zip(masks, xs)]
    # Reference: each level's focal loss with its own params over the valid entries only.
    ref = 0.0
    for i, (x, t, m) in enumerate(zip(xs, ts, full)):
        g, a = progressive_focus_params(x[m], t[m], delta=1.0)
        assert loss_fn.last_gamma[i].item() == pytest.approx(g.item(), rel=1e-6)
        ref += sigmoid_focal_loss(x[m], t[m], alpha=a, gamma=g, reduction="sum").item()
    assert loss.item() == pytest.approx(ref / 3.0, rel=1e-5)


def test_levels_must_share_rank_classes_and_images():
    loss_fn = ProgressiveFocalLoss()
    with pytest.raises(ValueError, match=r"logits_per_level\[1\] has shape \(4, 3\), incompatible"):
        loss_fn([torch.zeros(5, 2), torch.zeros(4, 3)], [torch.zeros(5, 2), torch.zeros(4, 3)], 1.0)
    with pytest.raises(ValueError, match=r"logits_per_level\[1\] has shape \(3, 4, 2\)"):
        loss_fn(
            [torch.zeros(2, 5, 2), torch.zeros(3, 4, 2)],
            [torch.zeros(2, 5, 2), torch.zeros(3, 4, 2)],
            1.0,
        )
    with pytest.raises(ValueError, match="must be"):
        loss_fn([torch.zeros(5)], [torch.zeros(5)], 1.0)
