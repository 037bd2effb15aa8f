"""GHM-C and GHM-R (Li et al., "Gradient Harmonized Single-stage Detector").

Unit-region approximation with EMA (Eq. 9-13) as the official code computes it: equal-width
bins on [0, 1]; a bin's EMA count is updated only when the bin is non-empty; weight =
(valid count) / (EMA count of the sample's bin) / (number of non-empty bins); loss summed and
divided by the valid count. Bin indices come from one vectorised pass and the histogram from
torch.bincount: no loop over bins or samples, no host sync.

Distributed: bin counts and the valid count are summed over processes (one all-reduce of
bins + 1 numbers), so every process holds the same EMA buffer and the DDP-averaged gradient
equals the single-process one over all inputs. Set `all_reduce_stats = False` on an instance
for the official per-process statistics.

Both losses take the levels of a pyramid: ``per_level=True`` harmonises each level on its own and
sums, as the official code does (the running bin counts are shared by the levels and updated once
per level); ``False`` harmonises all levels at once.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import BoxRegressionLoss, ClassificationLoss
from .utils import all_reduce_sum, as_valid_mask, check_finite, check_same_shape, world_size

__all__ = ["GHMCLoss", "GHMRLoss"]


class _WeightedSum(torch.autograd.Function):
    """sum(weight * loss) given the loss values and their derivative (all without graph).

    One fused pass forward and two backward, where autograd would keep every intermediate."""

    @staticmethod
    def forward(ctx, inputs, loss, loss_grad, weight):
        ctx.save_for_backward(loss_grad, weight)
        return torch.dot(loss.reshape(-1), weight.reshape(-1))

    @staticmethod
    def backward(ctx, grad):
        loss_grad, weight = ctx.saved_tensors
        return loss_grad.mul(weight).mul_(grad), None, None, None


class _GradientHarmonizer(nn.Module):
    """The unit-region histogram and its EMA, shared by GHM-C and GHM-R."""

    all_reduce_stats = True

    def __init__(self, bins, momentum, last_edge, per_level, loss_weight):
        super().__init__()
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.bins, self.momentum = int(bins), float(momentum)
        self.per_level, self.loss_weight = per_level, loss_weight
        edges = torch.arange(self.bins + 1, dtype=torch.float32) / self.bins
        edges[-1] = last_edge(edges[-1])
        self.register_buffer("edges", edges, persistent=False)
        # bins as a tensor on the module's device: CUDA computes x / (CPU scalar) as
        # x * (1 / scalar), which is not the correctly rounded division used for the edges.
        self.register_buffer("bins_divisor", torch.tensor(float(self.bins)), persistent=False)
        # EMA of the per-bin counts (S_j of Eq. 12); saved in checkpoints.
        self.register_buffer("acc_sum", torch.zeros(self.bins))

    def extra_repr(self):
        return (f"bins={self.bins}, momentum={self.momentum}, per_level={self.per_level}, "
                f"loss_weight={self.loss_weight}")

    @torch.no_grad()
    def bin_index(self, g):
        """j with edges[j] <= g < edges[j+1] for g in [0, 1], as the official per-bin loop.

        floor(g * bins) in float32 can be one off only next to an edge; j / bins recomputes
        edges[j] bit-exactly (the same float32 division as the edges), so one check each way
        fixes it. Faster than torch.bucketize on CPU. The top bin takes g >= edges[-2].
        """
        j = torch.floor(g * self.bins)
        j.sub_((g < j / self.bins_divisor).float())
        j.add_((g >= (j + 1) / self.bins_divisor).float())
        return j.clamp_(0, self.bins - 1).long()

    @torch.no_grad()
    def harmonizing_weights(self, g, valid):
        """Per-entry beta_i (Eq. 10/13 with the official 1/n_nonempty) and the denominator."""
        bin_index = self.bin_index(g)
        if valid is not None:  # invalid entries go to a dropped extra bin
            bin_index = torch.where(valid, bin_index, self.bins)
        counts = torch.bincount(bin_index.reshape(-1), minlength=self.bins + 1)[: self.bins]
        stats = torch.cat([counts.float(), counts.sum().view(1).float()])
        procs = 1
        if self.all_reduce_stats:
            stats = all_reduce_sum(stats)
            procs = world_size()
        counts, total = stats[:-1], stats[-1]
        nonempty = counts > 0
        if self.momentum > 0:
            ema = self.momentum * self.acc_sum + (1 - self.momentum) * counts
            self.acc_sum.copy_(torch.where(nonempty, ema, self.acc_sum))
            density = self.acc_sum
        else:
            density = counts
        bin_weight = torch.where(nonempty, total / (density * nonempty.sum()), 0.0)
        weights = torch.cat([bin_weight, bin_weight.new_zeros(1)]).take(bin_index)
        # Per-process denominator total / procs: the mean over processes of the losses is the
        # loss of the concatenated inputs (official: max(total, 1) with one process).
        return weights, total.clamp_min(1.0) / procs

    def harmonized_loss(self, inputs, loss, loss_grad, g, valid):
        """sum_i beta_i L_i / tot, differentiable w.r.t. `inputs` through dL/dinputs."""
        weights, denominator = self.harmonizing_weights(g, valid)
        return _WeightedSum.apply(inputs, loss, loss_grad, weights) / denominator

    def harmonized_one(self, inputs, targets, valid):
        """The loss of one ``[N, K]`` tensor (all of it harmonised together)."""
        raise NotImplementedError

    def over_levels(self, inputs, targets, valid):
        """loss_weight x the harmonised loss of per-level tensors (see the module docstring)."""
        if self.per_level:
            valid = valid or [None] * len(inputs)
            total = sum(self.harmonized_one(x, t, v) for x, t, v in zip(inputs, targets, valid))
            return self.loss_weight * total
        # All levels at once: flatten every level to [-1, K] and join them.
        flat = lambda xs: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])  # noqa: E731
        joined_valid = None
        if valid is not None and None not in valid:
            joined_valid = torch.cat([
                v.reshape(-1) if v.dim() < x.dim() else v.reshape(-1, x.shape[-1])
                for v, x in zip(valid, inputs)
            ])
        return self.loss_weight * self.harmonized_one(flat(inputs), flat(targets), joined_valid)


class GHMCLoss(_GradientHarmonizer, ClassificationLoss):
    """
    GHM-C (Eq. 9-13): BCE weighted by the inverse gradient density of g = |sigmoid(x) - y|.

    GHM-C divides by its own count of valid entries (the official ``tot``), which is what makes
    beta_i = tot / GD(g_i) a density weight (Eq. 10): the ``normalizer`` of the classification
    contract is accepted and not used.

    Args:
        bins: number of unit regions on [0, 1] (M of Eq. 9).
        momentum: EMA momentum of the per-region counts (Eq. 12); 0: no EMA.
        per_level: harmonise each level on its own and sum (the official code), or all at once.
        loss_weight: multiplies the loss.
    """

    def __init__(self, bins=30, momentum=0.75, per_level=True, loss_weight=1.0):
        # Last edge 1 + 1e-6 so that g = 1 falls in the last bin.
        super().__init__(bins, momentum, lambda e: e + 1e-6, per_level, loss_weight)

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        """See :class:`ClassificationLoss`; ``normalizer`` is not used (see above)."""
        return self.over_levels(logits_per_level, targets_per_level, valid_per_level)

    def harmonized_one(self, logits, targets, valid):
        check_same_shape("targets", targets, "logits", logits)
        check_finite("logits", logits)
        x, t = logits.float(), targets.float()
        valid = as_valid_mask(valid, x)
        if valid is not None:
            valid = valid.expand_as(x)
        with torch.no_grad():
            loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            loss_grad = torch.sigmoid(x).sub_(t)  # dBCE/dx = sigmoid(x) - y
            g = loss_grad.abs()
        return self.harmonized_loss(x, loss, loss_grad, g, valid)


class GHMRLoss(_GradientHarmonizer, BoxRegressionLoss):
    """
    GHM-R: ASL1 (Eq. 17) on box deltas d = pred - target, weighted by the inverse density of
    g = |d| / sqrt(d^2 + mu^2) (Eq. 18-19), divided by its count of valid entries.

    Args:
        mu: the ASL1 parameter (> 0).
        bins: number of unit regions.
        momentum: EMA momentum of the per-region counts; 0: no EMA.
        per_level: as in :class:`GHMCLoss`.
        loss_weight: multiplies the loss; 10 is the official RetinaNet config's.
    """

    def __init__(self, mu=0.02, bins=10, momentum=0.7, per_level=True, loss_weight=10.0):
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        # Open-ended last bin (the official code uses an edge of 1e3).
        super().__init__(bins, momentum, lambda e: torch.tensor(1e3), per_level, loss_weight)
        self.mu = float(mu)

    def extra_repr(self):
        return f"mu={self.mu}, " + super().extra_repr()

    def forward(self, pred_deltas_per_level, target_deltas_per_level, valid_per_level=None):
        return self.over_levels(pred_deltas_per_level, target_deltas_per_level, valid_per_level)

    def harmonized_one(self, pred, target, valid):
        check_same_shape("target", target, "pred", pred)
        check_finite("pred", pred)
        check_finite("target", target)
        d = pred.float() - target.float()
        valid = as_valid_mask(valid, d)
        if valid is not None:
            valid = valid.expand_as(d)
        with torch.no_grad():
            root = torch.sqrt(d * d + self.mu**2)
            loss = root - self.mu  # ASL1, Eq. 17
            loss_grad = d / root  # Eq. 18
            g = loss_grad.abs()
        return self.harmonized_loss(d, loss, loss_grad, g, valid)
