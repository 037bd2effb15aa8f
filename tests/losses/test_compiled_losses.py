"""ProgressiveFocalLoss(compile=True): the torch.compile'd stages give the eager values and
gradients; a torch.compile that fails says which flag asked for it."""

import pytest
import torch

import hpf.losses.hpf as hpf_module
from hpf.losses import ProgressiveFocalLoss


def test_compiled_stages_equal_eager():
    # One compilation (about 15 s on a 2-core CPU): level sampling with an anchor mask.
    gen = torch.Generator().manual_seed(0)
    sizes = (40, 10, 3)
    xs = [torch.randn(2, n, 5, generator=gen) * 2 for n in sizes]
    ts = [(torch.rand(2, n, 5, generator=gen) < 0.1).float() for n in sizes]
    valid = [torch.rand(2, n, generator=gen) < 0.8 for n in sizes]
    results = []
    for compile in (False, True):
        loss_fn = ProgressiveFocalLoss(delta=1.0, compile=compile)
        leaves = [x.clone().requires_grad_(True) for x in xs]
        loss = loss_fn(leaves, ts, 3.0, valid)
        results.append((loss, torch.autograd.grad(loss, leaves), loss_fn.last_gamma))
    (eager, eager_grads, eager_gamma), (compiled, grads, gamma) = results
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(gamma, eager_gamma)
    for g, ref in zip(grads, eager_grads):
        torch.testing.assert_close(g, ref)
    assert "compile=True" in repr(ProgressiveFocalLoss(compile=True))
    assert "compile" not in repr(ProgressiveFocalLoss())
    # A NaN logit is still named, though compiled code may assume finite math.
    xs[1][0, 3, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"logits_per_level\[1\]"):
        ProgressiveFocalLoss(compile=True)(xs, ts, 3.0, valid)


def test_failing_compile_names_the_flag(monkeypatch):
    from torch._inductor.exc import InductorError

    def failing_compile(fn, **kwargs):
        def run(*args):
            raise InductorError(RuntimeError("InvalidCxxCompiler: No working C++ compiler"), None)

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(hpf_module, "_COMPILED", {})
    xs = [torch.randn(2, 4, 3)]
    ts = [torch.zeros(2, 4, 3)]
    with pytest.raises(RuntimeError, match=r"model\.cls_loss\.compile=True.*C\+\+ compiler.*"
                                           r"set compile=False"):
        ProgressiveFocalLoss(compile=True)(xs, ts, 1.0)
    # Errors that are not torch.compile's propagate unchanged.

    def other_error(fn, **kwargs):
        def run(*args):
            raise ValueError("not a compile error")

        return run

    monkeypatch.setattr(torch, "compile", other_error)
    monkeypatch.setattr(hpf_module, "_COMPILED", {})
    with pytest.raises(ValueError, match="not a compile error"):
        ProgressiveFocalLoss(compile=True)(xs, ts, 1.0)
