"""Sampling-Free ingredients (Chen et al., conference version, Eq. 5-10 and Table 2)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import all_reduce_sum, as_valid_mask, check_finite, check_same_shape, world_size


def _check_scalar_losses(cls_loss, reg_loss):
    for name, loss in (("cls_loss", cls_loss), ("reg_loss", reg_loss)):
        if not torch.is_tensor(loss) or loss.numel() != 1:
            shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(f"{name} must be a scalar tensor, got {shape}")


def _guided_ratio(cls_loss, reg_loss):
    """w = L_reg / L_cls (Eq. 8), detached; 0 when L_cls is 0 (the scaled loss is then 0)."""
    with torch.no_grad():
        cls_value = cls_loss.float()
        safe = torch.where(cls_value != 0, cls_value, 1.0)
        return torch.where(cls_value != 0, reg_loss.float() / safe, 0.0)


def guided_loss_scale(cls_loss, reg_loss, factor=1.0):
    """Guided loss scaling (Eq. 7-8): factor * (L_reg / L_cls).detach() * L_cls.

    The value equals factor * L_reg; the gradient is that of L_cls times the constant ratio.
    factor=2 is the paper's rule for RoI heads of two-/multi-stage detectors.
    """
    _check_scalar_losses(cls_loss, reg_loss)
    return factor * _guided_ratio(cls_loss, reg_loss).to(cls_loss.dtype) * cls_loss


class GuidedLossScale(nn.Module):
    """Guided loss scaling with an optional frozen ratio (the later official GuidedLoss).

    freeze_after=None: the ratio is recomputed every call (the paper, Eq. 8). freeze_after=K:
    calls 1..K-1 use the current ratio; call K averages its ratio over processes and freezes
    it; later calls reuse it. `ratio` and `num_calls` are buffers, so checkpoints keep the
    frozen value. (The official module also learns uncertainty weights sigma_i; not included.)
    """

    def __init__(self, factor=1.0, freeze_after=None):
        super().__init__()
        # A factor <= 0 would zero or flip the classification loss instead of scaling it.
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        if freeze_after is not None and (int(freeze_after) != freeze_after or freeze_after < 1):
            raise ValueError(f"freeze_after must be None or a positive integer, got {freeze_after}")
        self.factor = float(factor)
        self.freeze_after = None if freeze_after is None else int(freeze_after)
        self.register_buffer("ratio", torch.tensor(0.0))
        self.register_buffer("num_calls", torch.tensor(0, dtype=torch.long))
        self._num_calls_cache = None  # host copy of num_calls, avoids a sync per call

    def extra_repr(self):
        return f"factor={self.factor}, freeze_after={self.freeze_after}"

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._num_calls_cache = None

    @property
    def frozen(self) -> bool:
        return self.freeze_after is not None and self._calls() >= self.freeze_after

    def _calls(self) -> int:
        if self._num_calls_cache is None:
            self._num_calls_cache = int(self.num_calls)
        return self._num_calls_cache

    def forward(self, cls_loss, reg_loss):
        _check_scalar_losses(cls_loss, reg_loss)
        calls = self._calls()
        if self.freeze_after is None or calls < self.freeze_after:
            with torch.no_grad():
                ratio = _guided_ratio(cls_loss, reg_loss).reshape(())
                calls += 1
                if calls == self.freeze_after:
                    # Freeze the process-averaged ratio of this call (official GuidedLoss).
                    ratio = all_reduce_sum(ratio) / world_size()
                self.ratio.copy_(ratio)
                self.num_calls.fill_(calls)
                self._num_calls_cache = calls
        return self.factor * self.ratio.to(cls_loss.dtype) * cls_loss


def optimal_prior(num_foreground, num_total, num_classes):
    """pi = N_f / (N * C) (Eq. 9-10): the prior minimising the initial sigmoid CE."""
    if num_total <= 0 or num_classes <= 0:
        raise ValueError(
            f"num_total and num_classes must be > 0, got {num_total} and {num_classes}"
        )
    if not 0 < num_foreground < num_total * num_classes:
        raise ValueError(
            f"num_foreground must be in (0, num_total * num_classes), got {num_foreground}"
        )
    return num_foreground / (num_total * num_classes)


def prior_bias(pi):
    """Classifier bias b = -log((1 - pi) / pi) (Eq. 10), so that sigmoid(b) = pi."""
    if torch.is_tensor(pi):
        return -torch.log((1 - pi) / pi)
    if not 0 < pi < 1:
        raise ValueError(f"pi must be in (0, 1), got {pi}")
    return -math.log((1 - pi) / pi)


def adaptive_threshold(num_foreground, num_total):
    """Inference score threshold theta = N_f / N (Table 2)."""
    if num_total <= 0:
        raise ValueError(f"num_total must be > 0, got {num_total}")
    if num_foreground < 0:
        raise ValueError(f"num_foreground must be >= 0, got {num_foreground}")
    return num_foreground / num_total


def sampling_free_ce_loss(logits, targets, normalizer=None, valid=None):
    """Sampling-Free classification loss: sigmoid CE summed over all valid samples and classes
    (no sampling, no focal term, no alpha), divided by `normalizer`.

    normalizer=None uses this process's number of valid positive entries (target > 0), at
    least 1, like the official one-stage code; pass the global count for a DDP-exact form.
    """
    check_same_shape("targets", targets, "logits", logits)
    check_finite("logits", logits)
    x, t = logits.float(), targets.float()
    valid = as_valid_mask(valid, x)
    if valid is None:
        total = F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    else:
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        total = torch.where(valid, loss, 0.0).sum()
    if normalizer is None:
        positives = t > 0 if valid is None else (t > 0) & valid
        normalizer = positives.sum().clamp_min(1).float()
    elif not torch.is_tensor(normalizer) and normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    return total / normalizer
