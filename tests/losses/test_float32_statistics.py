"""The statistics of HPF (gamma_ad / alpha_ad, the positives' sums) and GHM (bin counts, their
EMA) are float32 whatever the inputs' dtype: bfloat16 / float16 logits, or logits made under
CPU autocast. They equal the statistics of the same values upcast to float32, the EMA buffers
stay float32, and each forward reduces its statistics with exactly one all-reduce."""

import pytest
import torch
import torch.nn as nn

import hpf.losses.ghm as ghm_module
import hpf.losses.hpf as hpf_module
from hpf.losses import (
    GHMCLoss,
    GHMRLoss,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    progressive_focus_params,
)

HPF_LOSSES = [ProgressiveFocalLoss, ProgressiveQualityFocalLoss, ProgressiveVarifocalLoss]
LOW = [torch.bfloat16, torch.float16]

# The same float32 values go through the same float32 operations: the statistics are equal
# (up to float32 rounding of sums of a few hundred terms, a few ulps; we allow 1e-6).
STATS_RTOL = 1e-6
# Logits rounded to bfloat16 (8 significant bits, unit roundoff 2^-8 = 0.4%) move each term of
# the loss by about that much relative; the sum moves less (errors of many terms cancel).
BF16_LOSS_RTOL = 1e-2


def pyramid(seed=0, images=2, sizes=(30, 12, 5), classes=4, quality=False):
    gen = torch.Generator().manual_seed(seed)
    logits = [torch.randn(images, n, classes, generator=gen) * 2 - 1 for n in sizes]
    positive = [torch.rand(images, n, classes, generator=gen) < 0.15 for n in sizes]
    if quality:
        targets = [torch.where(p, 0.3 + 0.7 * torch.rand(p.shape, generator=gen), 0.0)
                   for p in positive]
    else:
        targets = [p.float() for p in positive]
    return logits, targets


def hpf_run(cls, sampling, logits, targets, valid=None):
    loss_fn = cls(sampling=sampling, delta=1.0)
    xs = [x.detach().clone().requires_grad_(True) for x in logits]
    loss = loss_fn(xs, targets, 7.0, valid)
    grads = torch.autograd.grad(loss, xs)
    return loss_fn, loss, grads


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("sampling", ["level", "all", "image"])
@pytest.mark.parametrize("cls", HPF_LOSSES)
def test_hpf_statistics_of_low_precision_logits_are_float32(cls, sampling, dtype):
    logits, targets = pyramid(1, quality=cls.uses_quality_targets)
    low = [x.to(dtype) for x in logits]
    upcast = [x.float() for x in low]
    valid = [torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(2)) < 0.9
             for x in logits]
    fn_low, loss_low, grads_low = hpf_run(cls, sampling, low, targets, valid)
    fn_ref, loss_ref, grads_ref = hpf_run(cls, sampling, upcast, targets, valid)
    for name in ("last_gamma", "last_alpha"):
        stat = getattr(fn_low, name)
        assert stat.dtype == torch.float32, name
        torch.testing.assert_close(stat, getattr(fn_ref, name), rtol=STATS_RTOL, atol=0)
    # Not at the clamp: the statistic really came from the logits.
    assert ((fn_low.last_gamma > 1.0) & (fn_low.last_gamma < 3.0)).any()
    assert loss_low.dtype == torch.float32 and torch.isfinite(loss_low)
    torch.testing.assert_close(loss_low, loss_ref, rtol=1e-5, atol=0)
    for g_low, g_ref in zip(grads_low, grads_ref):
        assert g_low.dtype == dtype and torch.isfinite(g_low).all()
        torch.testing.assert_close(g_low, g_ref.to(dtype))
    if dtype == torch.bfloat16:
        # And close to the loss of the float32 logits the bfloat16 ones were rounded from.
        _, loss_f32, _ = hpf_run(cls, sampling, logits, targets, valid)
        torch.testing.assert_close(loss_low, loss_f32, rtol=BF16_LOSS_RTOL, atol=0)


@pytest.mark.parametrize("cls", HPF_LOSSES)
@pytest.mark.parametrize("sampling", ["level", "image"])
def test_hpf_under_cpu_autocast(cls, sampling):
    # A head made under autocast gives bfloat16 logits; the loss, called inside the autocast
    # region, gives the statistics of those logits upcast to float32.
    logits, targets = pyramid(3, quality=cls.uses_quality_targets)
    torch.manual_seed(0)
    head = nn.Linear(4, 4)
    feats = [x.detach() for x in logits]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = [head(f) for f in feats]
        assert all(o.dtype == torch.bfloat16 for o in out)
        loss_fn = cls(sampling=sampling, delta=1.0)
        loss = loss_fn(out, targets, 5.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    ref = cls(sampling=sampling, delta=1.0)
    ref_loss = ref([o.detach().float() for o in out], targets, 5.0)
    assert loss_fn.last_gamma.dtype == torch.float32
    torch.testing.assert_close(loss_fn.last_gamma, ref.last_gamma, rtol=STATS_RTOL, atol=0)
    torch.testing.assert_close(loss_fn.last_alpha, ref.last_alpha, rtol=STATS_RTOL, atol=0)
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", LOW)
def test_progressive_focus_params_are_float32(dtype):
    logits, targets = pyramid(4)
    x, t = logits[0].to(dtype), targets[0]
    g, a = progressive_focus_params(x, t, delta=1.0)
    g_ref, a_ref = progressive_focus_params(x.float(), t, delta=1.0)
    assert g.dtype == a.dtype == torch.float32
    torch.testing.assert_close((g, a), (g_ref, a_ref), rtol=STATS_RTOL, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_auto, _ = progressive_focus_params(x, t, delta=1.0)
    assert g_auto.dtype == torch.float32
    torch.testing.assert_close(g_auto, g_ref, rtol=STATS_RTOL, atol=0)


def ghm_steps(module, inputs_per_step, targets_per_step):
    """Loss per call and the gradients of the last call."""
    losses = []
    for inputs, targets in zip(inputs_per_step, targets_per_step):
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        if isinstance(module, GHMCLoss):
            loss = module(xs, targets, 1.0)
        else:
            loss = module(xs, targets)
        losses.append(loss)
    return losses, torch.autograd.grad(losses[-1], xs)


def ghm_data(kind, steps=3):
    gen = torch.Generator().manual_seed(5)
    if kind == "ghmc":
        xs = [[torch.randn(n, 6, generator=gen) * (2 + s) for n in (50, 20)] for s in range(steps)]
        ts = [[(torch.rand(n, 6, generator=gen) < 0.1).float() for n in (50, 20)]
              for _ in range(steps)]
    else:
        xs = [[torch.randn(n, 4, generator=gen) * 0.3 for n in (25, 8)] for _ in range(steps)]
        ts = [[torch.randn(n, 4, generator=gen) * 0.05 for n in (25, 8)] for _ in range(steps)]
    return xs, ts


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("per_level", [True, False])
@pytest.mark.parametrize("kind,cls", [("ghmc", GHMCLoss), ("ghmr", GHMRLoss)])
def test_ghm_histograms_and_ema_are_float32(kind, cls, per_level, dtype):
    xs, ts = ghm_data(kind)
    low = [[x.to(dtype) for x in step] for step in xs]
    upcast = [[x.float() for x in step] for step in low]
    module, ref = cls(per_level=per_level), cls(per_level=per_level)
    losses, grads = ghm_steps(module, low, ts)
    ref_losses, ref_grads = ghm_steps(ref, upcast, ts)
    # After 3 calls the EMA of the bin counts (Eq. 12) is float32 and equals the float32 one.
    assert module.acc_sum.dtype == torch.float32 and (module.acc_sum > 0).sum() > 3
    torch.testing.assert_close(module.acc_sum, ref.acc_sum, rtol=STATS_RTOL, atol=0)
    for loss, ref_loss in zip(losses, ref_losses):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for g, g_ref in zip(grads, ref_grads):
        assert g.dtype == dtype and torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref.to(dtype))


@pytest.mark.parametrize("kind,cls", [("ghmc", GHMCLoss), ("ghmr", GHMRLoss)])
def test_ghm_under_cpu_autocast_and_cast_module(kind, cls):
    xs, ts = ghm_data(kind)
    ref = cls()
    ref_losses, _ = ghm_steps(ref, [[x.to(torch.bfloat16).float() for x in s] for s in xs], ts)
    # A module cast to bfloat16 (e.g. with the whole model) keeps float32 statistics.
    module = cls().to(torch.bfloat16)
    assert module.acc_sum.dtype == module.edges.dtype == torch.float32
    assert cls().half().acc_sum.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, grads = ghm_steps(module, [[x.to(torch.bfloat16) for x in s] for s in xs], ts)
    assert module.acc_sum.dtype == torch.float32
    torch.testing.assert_close(module.acc_sum, ref.acc_sum, rtol=STATS_RTOL, atol=0)
    for loss, ref_loss in zip(losses, ref_losses):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    # A checkpoint of the float32 buffer loads into a cast module without losing bits.
    state = ref.state_dict()
    fresh = cls().to(torch.bfloat16)
    fresh.load_state_dict(state)
    assert fresh.acc_sum.dtype == torch.float32 and torch.equal(fresh.acc_sum, ref.acc_sum)


class CountingAllReduce:
    def __init__(self):
        self.calls = 0

    def __call__(self, tensor):
        self.calls += 1
        assert tensor.dtype == torch.float32
        return tensor


@pytest.mark.parametrize("sampling,expected", [("level", 1), ("all", 1), ("image", 0)])
@pytest.mark.parametrize("cls", HPF_LOSSES)
def test_hpf_reduces_its_statistics_once_per_call(cls, sampling, expected, monkeypatch):
    counter = CountingAllReduce()
    monkeypatch.setattr(hpf_module, "all_reduce_sum", counter)
    logits, targets = pyramid(6, quality=cls.uses_quality_targets)
    cls(sampling=sampling)([x.to(torch.bfloat16) for x in logits], targets, 3.0)
    assert counter.calls == expected  # images are process-local: "image" reduces nothing


@pytest.mark.parametrize("per_level", [True, False])
@pytest.mark.parametrize("kind,cls", [("ghmc", GHMCLoss), ("ghmr", GHMRLoss)])
def test_ghm_reduces_its_histograms_once_per_call(kind, cls, per_level, monkeypatch):
    counter = CountingAllReduce()
    monkeypatch.setattr(ghm_module, "all_reduce_sum", counter)
    xs, ts = ghm_data(kind, steps=2)
    ghm_steps(cls(per_level=per_level), xs, ts)
    assert counter.calls == 2  # two calls of three levels: one all-reduce each
