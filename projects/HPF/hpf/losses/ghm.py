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
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import all_reduce_sum, as_valid_mask, check_finite, check_same_shape, world_size


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
    all_reduce_stats = True

    def __init__(self, bins, momentum, last_edge):
        super().__init__()
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.bins, self.momentum = int(bins), float(momentum)
        edges = torch.arange(self.bins + 1, dtype=torch.float32) / self.bins
        edges[-1] = last_edge(edges[-1])
        self.register_buffer("edges", edges, persistent=False)
        # bins as a tensor on the module's device: CUDA computes x / (CPU scalar) as
        # x * (1 / scalar), which is not the correctly rounded division used for the edges.
        self.register_buffer("bins_divisor", torch.tensor(float(self.bins)), persistent=False)
        # EMA of the per-bin counts (S_j of Eq. 12); saved in checkpoints.
        self.register_buffer("acc_sum", torch.zeros(self.bins))

    def extra_repr(self):
        return f"bins={self.bins}, momentum={self.momentum}"

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


class GHMC(_GradientHarmonizer):
    """GHM-C: BCE weighted by the inverse gradient density of g = |sigmoid(x) - y|."""

    def __init__(self, bins=30, momentum=0.75):
        # Last edge 1 + 1e-6 so that g = 1 falls in the last bin.
        super().__init__(bins, momentum, lambda e: e + 1e-6)

    def forward(self, logits, targets, valid=None):
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


class GHMR(_GradientHarmonizer):
    """GHM-R: ASL1 (Eq. 17) weighted by the inverse density of g = |d| / sqrt(d^2 + mu^2)
    (Eq. 18-19) on box deltas d = pred - target."""

    def __init__(self, mu=0.02, bins=10, momentum=0.7):
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        # Open-ended last bin (the official code uses an edge of 1e3).
        super().__init__(bins, momentum, lambda e: torch.tensor(1e3))
        self.mu = float(mu)

    def extra_repr(self):
        return f"mu={self.mu}, " + super().extra_repr()

    def forward(self, pred, target, valid=None):
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
