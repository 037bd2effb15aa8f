"""Trainer pieces: the finite-loss check and gradient clipping (in-process, tiny model)."""
import pytest
import torch
from detectron2.utils.events import EventStorage

from hpf.engine.trainers import FiniteLossTrainer, GradientClipHook


class TinyModel(torch.nn.Module):
    def __init__(self, bad_iter=None, bad_grad=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.bad_iter, self.bad_grad, self.calls = bad_iter, bad_grad, 0

    def forward(self, data):
        self.calls += 1
        loss = (self.w * data).sum() ** 2
        if self.bad_iter is not None and self.calls - 1 == self.bad_iter:
            loss = loss * float("nan")
        if self.bad_grad:  # finite value, NaN gradient: sqrt at 0
            loss = loss + torch.sqrt(self.w[0] - 1.0) * 0.0
        return {"loss": loss}


def make_trainer(model, hooks=()):
    data = iter(lambda: torch.full((3,), 10.0), None)
    trainer = FiniteLossTrainer(model, data, torch.optim.SGD(model.parameters(), lr=1e-3))
    trainer.register_hooks(list(hooks))
    return trainer


def test_nan_loss_raises_with_the_iteration_before_the_step():
    model = TinyModel(bad_iter=3)
    trainer = make_trainer(model)
    with pytest.raises(FloatingPointError, match="iteration 3"):
        trainer.train(0, 10)
    # Iterations 0-2 stepped, iteration 3 did not: the weights are finite.
    assert torch.isfinite(model.w).all() and model.calls == 4


def test_nan_gradient_with_finite_loss_is_caught():
    trainer = make_trainer(TinyModel(bad_grad=True))
    with pytest.raises(FloatingPointError, match="iteration 0"):
        trainer.train(0, 2)


def test_gradient_clip_hook_bounds_the_norm_and_logs_it():
    model = TinyModel()
    trainer = make_trainer(model, [GradientClipHook(max_norm=1.0)])
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.iter = 0
        loss = model(torch.full((3,), 10.0))["loss"]
        loss.backward()
        before = model.w.grad.norm().item()
        trainer._hooks[0].after_backward()
    assert before > 1.0
    assert model.w.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert storage.latest()["grad_norm"][0] == pytest.approx(before, rel=1e-5)
