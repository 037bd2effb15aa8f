"""GHM-C and GHM-R (Li et al., "Gradient Harmonized Single-stage Detector").

Unit-region approximation with EMA (Eq. 9-13) as the official code computes it: equal-width
bins on [0, 1]; a bin's EMA count is updated only when the bin is non-empty; weight =
(valid count) / (EMA count of the sample's bin) / (number of non-empty bins); loss summed and
divided by the valid count. Bin indices come from a vectorised table lookup and the histogram
from torch.bincount: no loop over bins or samples.

A forward runs in two stages over the levels, which stay separate tensors: the first computes
each level's loss, its derivative and its histogram; then the histograms of all levels are
reduced at once (one all-reduce) and the EMA updated; the second weights each level. Histograms,
the EMA and the weights are float32 whatever the inputs' dtype or autocast, and the EMA buffer
stays float32 when the module is cast (``.half()``, ``.to(torch.bfloat16)``).

Distributed: bin counts and the valid count are summed over processes (one all-reduce of
levels x (bins + 1) numbers), so every process holds the same EMA buffer and the DDP-averaged
gradient equals the single-process one over all inputs. Set `all_reduce_stats = False` on an
instance for the official per-process statistics.

Both losses take the levels of a pyramid: ``per_level=True`` harmonises each level on its own and
sums, as the official code does (the running bin counts are shared by the levels and updated once
per level, in level order); ``False`` harmonises all levels at once.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import BoxRegressionLoss, ClassificationLoss
from .utils import (
    all_reduce_sum,
    as_valid_mask,
    check_finite_all,
    check_same_shape,
    float32_region,
    sum_of_products,
    with_precomputed_gradients,
    world_size,
)

__all__ = ["GHMCLoss", "GHMRLoss"]

_NO_EDGE = torch.iinfo(torch.int32).max


def _bin_tables(edges):
    """(shift, base, cut) such that for a float32 g >= 0 with bit pattern b (an int32, ordered
    like the floats) and key = b >> shift, the official bin (edges[j] <= g < edges[j+1], the
    top bin taking every g >= edges[-2]) is base[key] + (b >= cut[key]).

    base[key] counts the inner edges at or below the key's first float; the key's range of
    2^shift floats holds at most one more inner edge, whose bits are cut[key] (no edge: int32
    max). Exact at every edge, where floor(g * bins) is off by one for some bin counts.
    """
    inner = edges[1:-1].contiguous().view(torch.int32).long()
    bins = len(edges) - 1
    # Neighbouring edges are 1/bins apart; below 1 a float's ulp is at most 2^-24, so ranges of
    # 2^shift floats with 2^(shift-24) < 1/(2 bins) hold at most one edge. Checked below.
    shift = max(0, 22 - math.ceil(math.log2(max(bins, 1))))
    while True:
        lo = torch.arange((2**31) >> shift, dtype=torch.long) << shift
        base = torch.searchsorted(inner, lo, right=True)
        upto = torch.searchsorted(inner, lo + (1 << shift) - 1, right=True)
        if bool((upto - base <= 1).all()) or shift == 0:
            break
        shift -= 1
    cut = torch.full_like(base, _NO_EDGE)
    has_edge = upto > base
    cut[has_edge] = inner[base[has_edge]]
    # uint8 bin indices (cheaper to add to and to count) while they, and the dropped extra
    # bin for invalid entries, fit.
    index_dtype = torch.uint8 if bins <= 255 else torch.int32
    return shift, base.to(index_dtype), cut.int()


class _GradientHarmonizer(nn.Module):
    """The unit-region histogram and its EMA, shared by GHM-C and GHM-R."""

    all_reduce_stats = True
    # (inputs, targets) names in error messages.
    input_names = ("inputs", "targets")

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
        shift, base, cut = _bin_tables(edges)
        self.bin_shift = shift
        self.register_buffer("bin_base", base, persistent=False)
        self.register_buffer("bin_cut", cut, persistent=False)
        # EMA of the per-bin counts (S_j of Eq. 12); saved in checkpoints.
        self.register_buffer("acc_sum", torch.zeros(self.bins))

    def extra_repr(self):
        return (f"bins={self.bins}, momentum={self.momentum}, per_level={self.per_level}, "
                f"loss_weight={self.loss_weight}")

    def _apply(self, fn, *args, **kwargs):
        # Statistics stay float32: a module cast to half precision keeps its EMA and edges.
        super()._apply(fn, *args, **kwargs)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    @torch.no_grad()
    def bin_index(self, g):
        """j with edges[j] <= g < edges[j+1] for g in [0, 1], as the official per-bin loop (the
        top bin takes g >= edges[-2]); int64, g's shape."""
        return self._bin_index(g.float().contiguous()).long()

    def _bin_index(self, g):
        """bin_index as uint8 (int32 beyond 255 bins), contiguous, g's shape, for a float32
        g >= 0 (see _bin_tables)."""
        g = g.contiguous()
        bits = g.view(torch.int32).view(-1)
        key = bits >> self.bin_shift
        j = self.bin_base.index_select(0, key)
        above = bits >= self.bin_cut.index_select(0, key)
        j += above.view(torch.uint8) if j.dtype == torch.uint8 else above
        return j.view(g.shape)

    # Subclass hook --------------------------------------------------------------------------
    def harmonized_terms(self, inputs, targets):
        """(the tensor the loss is differentiated w.r.t., the element-wise loss L_i, dL_i/d
        that tensor, the gradient norm g_i), all float32; the last three without graph."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------
    def over_levels(self, inputs, targets, valid):
        """loss_weight x the harmonised loss of per-level tensors (see the module docstring)."""
        in_name, target_name = self.input_names
        valid = valid or [None] * len(inputs)
        with float32_region(inputs[0].device):
            levels = []
            for x, t, v in zip(inputs, targets, valid):
                check_same_shape(target_name, t, in_name, x)
                v = as_valid_mask(v, x)
                levels.append(self._histogram(x, t, v))
            return self._weighted_sum(levels, inputs, targets)

    @torch.no_grad()
    def _histogram_of(self, g, valid):
        j = self._bin_index(g)
        if valid is not None:  # invalid entries go to a dropped extra bin
            j = torch.where(valid, j, self.bins)
        counts = torch.bincount(j.reshape(-1), minlength=self.bins + 1)[: self.bins]
        return j, counts

    def _histogram(self, x, t, valid):
        """Stage 1 of one level: its terms, bin indices and [counts, valid count, probe]."""
        diff_input, loss, loss_grad, g = self.harmonized_terms(x, t)
        j, counts = self._histogram_of(g, valid)
        counts = counts.float()
        # The loss sum is NaN or inf with any input (see harmonized_terms): the finiteness probe.
        row = torch.cat([counts, counts.sum().view(1), loss.sum().view(1)])
        return diff_input, loss, loss_grad, j, row

    @torch.no_grad()
    def _bin_weights(self, stats):
        """Per histogram row (in order: the EMA is updated once per row): the weight of each
        bin (Eq. 10/13 with the official 1/n_nonempty) divided by the denominator, times
        loss_weight; a last, dropped bin weighs 0."""
        procs = world_size() if self.all_reduce_stats else 1
        out = []
        for row in stats:
            counts, total = row[: self.bins], row[self.bins]
            nonempty = counts > 0
            if self.momentum > 0:
                ema = self.momentum * self.acc_sum + (1 - self.momentum) * counts
                self.acc_sum.copy_(torch.where(nonempty, ema, self.acc_sum))
                density = self.acc_sum
            else:
                density = counts
            weight = torch.where(nonempty, total / (density * nonempty.sum()), 0.0)
            # Per-process denominator total / procs: the mean over processes of the losses is
            # the loss of the concatenated inputs (official: max(total, 1) with one process).
            weight = weight * (self.loss_weight * procs / total.clamp_min(1.0))
            out.append(torch.cat([weight, weight.new_zeros(1)]))
        return out

    def _weighted_sum(self, levels, inputs, targets):
        local = torch.stack([level[-1] for level in levels])  # [L, bins + 2]
        stats = local if self.per_level else local.sum(0, keepdim=True)
        if self.all_reduce_stats:
            # One all-reduce of every histogram; the probes travel along, so that a process
            # whose inputs are fine learns that another's are not (all raise, none hangs).
            stats = all_reduce_sum(stats)
        # The only host sync, before the EMA changes.
        local_ok, global_ok = torch.stack(
            [torch.isfinite(local[:, -1]).all(), torch.isfinite(stats[:, -1]).all()]
        ).tolist()
        if not local_ok:
            in_name, target_name = self.input_names
            check_finite_all(in_name, inputs)
            check_finite_all(target_name, targets)
        if not global_ok:
            raise FloatingPointError(
                f"{type(self).__name__}: another process has NaN or inf inputs"
            )
        weights = self._bin_weights(stats[:, :-1])
        values, grads, diff_inputs = [], [], []
        need_grad = torch.is_grad_enabled()
        for k, (diff_input, loss, loss_grad, j, _) in enumerate(levels):
            bin_weight = weights[k if self.per_level else 0]
            with torch.no_grad():
                w = bin_weight.index_select(0, j.reshape(-1).int()).view(j.shape)
                values.append(sum_of_products(loss, w))
                # beta_i dL_i/dx: computed here, kept instead of autograd's intermediates.
                wanted = need_grad and diff_input.requires_grad
                grads.append(loss_grad.mul_(w) if wanted else None)
            diff_inputs.append(diff_input)
        total = torch.stack(values).sum()
        return with_precomputed_gradients(total, grads, diff_inputs)


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

    input_names = ("logits", "targets")

    def __init__(self, bins=30, momentum=0.75, per_level=True, loss_weight=1.0):
        # Last edge 1 + 1e-6 so that g = 1 falls in the last bin.
        super().__init__(bins, momentum, lambda e: e + 1e-6, per_level, loss_weight)

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        """See :class:`ClassificationLoss`; ``normalizer`` is not used (see above)."""
        return self.over_levels(logits_per_level, targets_per_level, valid_per_level)

    def harmonized_terms(self, logits, targets):
        x, t = logits.float(), targets.float()
        with torch.no_grad():
            loss_grad = torch.sigmoid(x).sub_(t)  # dBCE/dx = sigmoid(x) - y; g = its norm
            g = loss_grad.abs()
            # BCE = softplus(x) - y x; NaN wherever x is NaN or inf (inf - inf, 0 * inf).
            loss = torch.addcmul(F.softplus(x), t, x, value=-1.0)
        return logits, loss, loss_grad, g


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

    input_names = ("pred", "target")

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

    def harmonized_terms(self, pred, target):
        d = pred.float() - target.float()
        with torch.no_grad():
            root = torch.sqrt(d * d + self.mu**2)
            loss = root - self.mu  # ASL1, Eq. 17; NaN or inf with d
            loss_grad = d / root  # Eq. 18
            g = loss_grad.abs()
        return d, loss, loss_grad, g
