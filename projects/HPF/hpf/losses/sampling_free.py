"""
Sampling-Free (Chen et al., conference version): every sample trains, with no sampling and no
focal term. Its classification loss (sigmoid CE over all valid samples, Sec. 3), guided loss
scaling (Eq. 7-8) in the forms the official code trained with, the optimal prior and bias
(Eq. 9-10) and the adaptive test threshold (Table 2).
"""

import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import ClassificationLoss
from .utils import all_reduce_sum, as_valid_mask, check_finite, check_same_shape, world_size

__all__ = [
    "GuidedLossScale",
    "SamplingFreeCELoss",
    "adaptive_threshold",
    "guided_loss_scale",
    "optimal_prior",
    "prior_bias",
    "sampling_free_ce_loss",
]

BALANCE_MODES = ("plain", "learned_scale", "guided_loss", "constant")


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


class SamplingFreeCELoss(ClassificationLoss):
    """Sampling-Free classification: sigmoid CE over every valid sample and class, no focal
    term, divided by the normalizer (the number of positives, Sec. 3)."""

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        valid_per_level = valid_per_level or [None] * len(logits_per_level)
        return sum(
            sampling_free_ce_loss(x, t, normalizer, v)
            for x, t, v in zip(logits_per_level, targets_per_level, valid_per_level)
        )


def _check_scalar_losses(cls_loss, reg_loss):
    for name, loss in (("cls_loss", cls_loss), ("reg_loss", reg_loss)):
        if not torch.is_tensor(loss) or loss.numel() != 1:
            shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(f"{name} must be a scalar tensor, got {shape}")


def _guided_ratio(cls_loss, reg_loss):
    """w = L_reg / L_cls (Eq. 8), detached, float32 whatever the losses' dtype; 0 when L_cls
    is 0 (the scaled loss is then 0)."""
    with torch.no_grad():
        cls_value = cls_loss.float()
        safe = torch.where(cls_value != 0, cls_value, 1.0)
        return torch.where(cls_value != 0, reg_loss.float() / safe, 0.0)


def _scaled(weight, loss):
    """weight * loss in at least float32: in the dtype of a bfloat16 / float16 loss (autocast)
    the ratio and the product would each be rounded to 8 / 11 significant bits."""
    dtype = torch.promote_types(loss.dtype, torch.float32)
    return weight.to(dtype) * loss.to(dtype)


def guided_loss_scale(cls_loss, reg_loss, factor=1.0):
    """Guided loss scaling (Eq. 7-8): factor * (L_reg / L_cls).detach() * L_cls.

    The value equals factor * L_reg; the gradient is that of L_cls times the constant ratio.
    factor=2 is the paper's rule for RoI heads of two-/multi-stage detectors. Computed in at
    least float32 (see :func:`_scaled`).
    """
    _check_scalar_losses(cls_loss, reg_loss)
    return _scaled(factor * _guided_ratio(cls_loss, reg_loss), cls_loss)


class GuidedLossScale(nn.Module):
    """
    The Sampling-Free weighting of a detector's classification loss against its other losses.
    A detector calls it on its whole loss dict (see :meth:`forward`); it returns the dict to
    optimise.

    Modes (r is detached: it scales the gradient of L_cls, it is never trained):

    * ``"plain"``: L_cls <- factor * r * L_cls, r = L_guide / L_cls (Eq. 7-8).
    * ``"learned_scale"``: ``"plain"``, then L_cls <- delta^2 * L_cls with a learnable delta
      (initialised to 1) and the extra loss -log delta^2, as the code behind the conference
      paper's RetinaNet and FCOS rows. Its gradient 2 delta L_cls' - 2 / delta vanishes at
      delta^2 = 1 / L_cls', so delta^2 follows the inverse of the scaled classification loss.
    * ``"guided_loss"``: r = mean of the other losses / L_cls for the first ``freeze_after``
      calls (default 100), then frozen at its value of call ``freeze_after`` averaged over
      processes; every loss L_i is then divided by 2 sigma_i^2 with a learnable sigma_i
      (initialised to 1), plus the extra loss sum_i log sigma_i: the later official form
      (uncertainty weighting), the only one of the official ATSS.
    * ``"constant"``: L_cls <- factor * L_cls, a constant weight w (Table 1 of the paper).

    The extra loss of the learned modes is returned under ``<cls_key>_balance``, so detectron2's
    trainer sums it, logs it and checks it for NaN. delta / sigma are parameters of the module
    and so of the detector: the optimizer, DDP and checkpoints carry them (with the optimizer's
    weight decay, as the official optimizer exempts only biases). ``ratio`` and ``num_calls``
    are buffers, so a checkpoint keeps a frozen ratio.

    Args:
        factor: multiplier of r (the paper's 2 for RoI heads), or the constant weight w.
        mode: one of ``"plain"``, ``"learned_scale"``, ``"guided_loss"``, ``"constant"``.
        freeze_after: None (r recomputed every call) or K (r frozen at call K). Default: None,
            100 for ``"guided_loss"``.
        guide: the numerator of r: ``"box"`` (the loss named ``box_key`` by the detector) or
            ``"mean"`` (the mean of every other loss). Default: ``"mean"`` for
            ``"guided_loss"``, else ``"box"``.
        num_losses: ``"guided_loss"`` only: the number of losses of the detector (one sigma
            each: the classification loss first, then the others in the detector's order).
    """

    def __init__(self, factor: float = 1.0, mode: str = "plain",
                 freeze_after: Optional[int] = None, guide: Optional[str] = None,
                 num_losses: Optional[int] = None):
        super().__init__()
        # A factor <= 0 would zero or flip the classification loss instead of scaling it.
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        if mode not in BALANCE_MODES:
            raise ValueError(f"mode must be one of {BALANCE_MODES}, got {mode!r}")
        if mode == "guided_loss" and freeze_after is None:
            freeze_after = 100
        if freeze_after is not None and (int(freeze_after) != freeze_after or freeze_after < 1):
            raise ValueError(f"freeze_after must be None or a positive integer, got {freeze_after}")
        guide = guide or ("mean" if mode == "guided_loss" else "box")
        if guide not in ("box", "mean"):
            raise ValueError(f"guide must be 'box' or 'mean', got {guide!r}")
        if (mode == "guided_loss") != (num_losses is not None):
            raise ValueError(
                f"num_losses is needed by mode='guided_loss' and only by it (mode={mode!r}, "
                f"num_losses={num_losses!r})"
            )
        if num_losses is not None and (int(num_losses) != num_losses or num_losses < 2):
            raise ValueError(f"num_losses must be an integer >= 2, got {num_losses!r}")
        self.factor = float(factor)
        self.mode = mode
        self.freeze_after = None if freeze_after is None else int(freeze_after)
        self.guide = guide
        self.num_losses = num_losses
        self.register_buffer("ratio", torch.tensor(0.0))
        self.register_buffer("num_calls", torch.tensor(0, dtype=torch.long))
        self._num_calls_cache = None  # host copy of num_calls, avoids a sync per call
        if mode == "learned_scale":
            self.delta = nn.Parameter(torch.ones(()))
        if mode == "guided_loss":
            self.sigmas = nn.Parameter(torch.ones(num_losses))

    def extra_repr(self):
        return (f"factor={self.factor}, mode={self.mode!r}, freeze_after={self.freeze_after}, "
                f"guide={self.guide!r}")

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

    @property
    def cls_weight(self) -> torch.Tensor:
        """The current factor x r (detached) that multiplies L_cls before any learned weight."""
        if self.mode == "constant":
            return self.ratio.new_tensor(self.factor)
        return self.factor * self.ratio

    def update_ratio(self, cls_loss: torch.Tensor, guide_loss: torch.Tensor) -> None:
        """r <- guide_loss / cls_loss, unless frozen; at call ``freeze_after`` the value is
        averaged over processes and kept from then on."""
        _check_scalar_losses(cls_loss, guide_loss)
        if self.mode == "constant":
            return
        calls = self._calls()
        if self.freeze_after is not None and calls >= self.freeze_after:
            return
        with torch.no_grad():
            ratio = _guided_ratio(cls_loss, guide_loss).reshape(())
            calls += 1
            if calls == self.freeze_after:
                ratio = all_reduce_sum(ratio) / world_size()
            self.ratio.copy_(ratio)
            self.num_calls.fill_(calls)
            self._num_calls_cache = calls

    def weighted(self, cls_loss: torch.Tensor) -> torch.Tensor:
        """The current classification weight times ``cls_loss`` (no ratio update), in at least
        float32 (see :func:`_scaled`)."""
        return _scaled(self.cls_weight, cls_loss)

    def scale(self, cls_loss: torch.Tensor, guide_loss: torch.Tensor) -> torch.Tensor:
        """``"plain"`` / ``"constant"`` on one pair of losses: factor * r * L_cls (or w L_cls)."""
        if self.mode not in ("plain", "constant"):
            raise ValueError(f"scale() serves modes 'plain' and 'constant', not {self.mode!r}; "
                             "call the module on the loss dict")
        self.update_ratio(cls_loss, guide_loss)
        return self.weighted(cls_loss)

    def forward(self, losses: Dict[str, torch.Tensor], cls_key: str,
                box_key: str) -> Dict[str, torch.Tensor]:
        """
        Args:
            losses: the detector's scalar losses, the classification loss among them.
            cls_key: the name of the classification loss in ``losses``.
            box_key: the name of the box loss (the numerator of r when ``guide="box"``).

        Returns:
            a new dict: the losses weighted as the mode says, plus ``<cls_key>_balance`` for
            the learned modes.
        """
        for key in (cls_key, box_key):
            if key not in losses:
                raise KeyError(f"GuidedLossScale: no loss named {key!r} in {sorted(losses)}")
        cls_loss = losses[cls_key]
        if self.guide == "box":
            guide = losses[box_key]
        else:
            # Summed in float32: the ratio is float32 whatever the losses' dtype.
            others = [v.float() for k, v in losses.items() if k != cls_key]
            guide = sum(others) / len(others)
        self.update_ratio(cls_loss, guide)
        out = dict(losses)
        out[cls_key] = self.weighted(cls_loss)
        if self.mode == "learned_scale":
            delta_sq = self.delta ** 2
            out[cls_key] = delta_sq * out[cls_key]
            out[f"{cls_key}_balance"] = -torch.log(delta_sq)
        elif self.mode == "guided_loss":
            names = [cls_key] + [k for k in losses if k != cls_key]
            if len(names) != self.num_losses:
                raise ValueError(
                    f"GuidedLossScale(num_losses={self.num_losses}) got {len(names)} losses "
                    f"{names}: set num_losses={len(names)} in the config"
                )
            self._loss_names = names
            for name, sigma in zip(names, self.sigmas):
                out[name] = out[name] / (2 * sigma ** 2)
            out[f"{cls_key}_balance"] = torch.log(self.sigmas).sum()
        return out

    def metrics(self) -> Dict[str, float]:
        """What to log: the ratio r, and delta^2 or every sigma_i^2 (keyed by loss name), as
        the metrics of a loss (:class:`ClassificationLoss`)."""
        values = {} if self.mode == "constant" else {"guided_ratio": float(self.ratio)}
        if self.mode == "learned_scale":
            values["delta_sq"] = float(self.delta.detach() ** 2)
        elif self.mode == "guided_loss":
            sigma_sq = (self.sigmas.detach() ** 2).tolist()
            names = getattr(self, "_loss_names", None) or [str(i) for i in range(len(sigma_sq))]
            values.update({f"sigma_sq/{n}": v for n, v in zip(names, sigma_sq)})
        return values
