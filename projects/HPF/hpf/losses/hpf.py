"""
HPF (Hierarchical Progressive Focus): progressive focus (Eq. 2-4) with hierarchical sampling
(Eq. 5, Algorithm 1), on the focal loss (ProgressiveFocalLoss), on QFL (PF-QFL, Eq. 6) and on
VFL (PF-VFL, Eq. 7).
"""

import torch
import torch.nn.functional as F

from .baselines import (
    binary_focal_parts,
    focal_terms,
    neg_log_probs,
    quality_focal_terms,
    varifocal_terms,
)
from .contract import ClassificationLoss
from .utils import (
    all_reduce_sum,
    as_valid_mask,
    check_finite,
    check_finite_all,
    check_same_shape,
)

__all__ = [
    "ProgressiveFocalLoss",
    "ProgressiveQualityFocalLoss",
    "ProgressiveVarifocalLoss",
    "progressive_focus_params",
]

ESTIMATORS = ("mean_log", "log_mean")
SAMPLINGS = ("level", "all", "image")


def _check_focus_args(gamma, delta, w, estimator):
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if gamma - delta < 0:
        raise ValueError(f"gamma - delta must be >= 0, got gamma={gamma}, delta={delta}")
    if w <= 0:
        raise ValueError(f"w must be > 0, got {w}")


@torch.no_grad()
def positive_stats(logits, positive, estimator, dims=None, neg_log_p=None):
    """Sum of the per-positive statistic and the positive count, float32, no gradient.

    `positive` is 1.0 at positives and 0.0 elsewhere. mean_log sums -log sigma(x) (the
    official HPF code); log_mean sums sigma(x) (Eq. 3 as printed). `neg_log_p` may pass a
    tensor equal to -log sigma(x) at the positives when the caller already has one.
    """
    if estimator == "mean_log":
        values = F.softplus(-logits) if neg_log_p is None else neg_log_p
    else:
        values = torch.sigmoid(logits)
    if dims is None:
        return torch.dot(values.reshape(-1), positive.reshape(-1)), positive.sum()
    return (values * positive).sum(dims), positive.sum(dims)


@torch.no_grad()
def focus_params_from_stats(stat_sum, count, gamma, delta, w, estimator):
    """(gamma_ad, alpha_ad) from summed statistics: Eq. 3 clamped to [gamma-delta, gamma+delta],
    then Eq. 4 alpha_ad = w / gamma_ad. Without positives gamma_ad = gamma."""
    mean = stat_sum / count.clamp_min(1.0)
    gamma_ad = mean if estimator == "mean_log" else -torch.log(mean)
    gamma_ad = torch.where(count > 0, gamma_ad, torch.full_like(gamma_ad, gamma))
    gamma_ad = gamma_ad.clamp(gamma - delta, gamma + delta)
    # The clamp_min only matters if gamma - delta = 0 and every positive has p = 1.
    alpha_ad = w / gamma_ad.clamp_min(1e-12)
    return gamma_ad, alpha_ad


def progressive_focus_params(logits, targets, gamma=2.0, delta=0.5, w=0.5, estimator="mean_log"):
    """(gamma_ad, alpha_ad) of Eq. 3-4 from the entries whose target is 1; 0-dim, no gradient.

    In a distributed run the sums and counts are all-reduced, so the result is the statistic of
    the concatenated inputs of all processes (every process must call this).
    """
    _check_focus_args(gamma, delta, w, estimator)
    check_same_shape("targets", targets, "logits", logits)
    check_finite("logits", logits)
    positive = (targets == 1).float()
    stat_sum, count = positive_stats(logits.float(), positive, estimator)
    stat_sum, count = all_reduce_sum(torch.stack([stat_sum, count]))
    return focus_params_from_stats(stat_sum, count, gamma, delta, w, estimator)


class _ProgressiveLoss(ClassificationLoss):
    """Shared forward of the progressive losses; subclasses give the element-wise loss."""

    def __init__(self, gamma=2.0, delta=0.5, w=0.5, sampling="level", estimator="mean_log"):
        super().__init__()
        _check_focus_args(gamma, delta, w, estimator)
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.gamma, self.delta, self.w = float(gamma), float(delta), float(w)
        self.sampling, self.estimator = sampling, estimator
        # gamma_ad / alpha_ad used by the last forward, per level ([L]; [L, B] for "image").
        self.last_gamma = None
        self.last_alpha = None

    def extra_repr(self):
        return (
            f"gamma={self.gamma}, delta={self.delta}, w={self.w}, "
            f"sampling={self.sampling!r}, estimator={self.estimator!r}"
        )

    def metrics(self):
        """gamma_ad and alpha_ad of the last forward, as ``gamma_ad/level<l>`` and
        ``alpha_ad/level<l>``; with ``sampling="image"`` the mean over the batch's images.
        Empty before the first forward."""
        values = {}
        for name, per_level in (("gamma_ad", self.last_gamma), ("alpha_ad", self.last_alpha)):
            if per_level is None:
                continue
            per_level = per_level.float()
            if per_level.dim() == 2:  # [L, B]
                per_level = per_level.mean(1)
            values.update({f"{name}/level{k}": v for k, v in enumerate(per_level.tolist())})
        return values

    # Subclass hooks -----------------------------------------------------------------------
    def positives(self, targets):
        """1.0 at the positive entries, 0.0 elsewhere (float32)."""
        raise NotImplementedError

    def level_terms(self, logits, targets):
        """Terms computed before gamma_ad is known: (-log sigma(x), valid at the positives, or
        None to let the statistic compute it; a cache handed to elementwise)."""
        raise NotImplementedError

    def elementwise(self, logits, targets, gamma, alpha, cache):
        """Loss per entry with the given (gamma_ad, alpha_ad)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------
    def _check_inputs(self, logits_per_level, targets_per_level, valid_per_level):
        if len(logits_per_level) == 0:
            raise ValueError("logits_per_level is empty; pass one tensor per pyramid level")
        for name, seq in (
            ("targets_per_level", targets_per_level),
            ("valid_per_level", valid_per_level),
        ):
            if seq is not None and len(seq) != len(logits_per_level):
                raise ValueError(
                    f"{name} has {len(seq)} levels but logits_per_level has "
                    f"{len(logits_per_level)}"
                )
        first = logits_per_level[0]
        for i, (x, t) in enumerate(zip(logits_per_level, targets_per_level)):
            check_same_shape(f"targets_per_level[{i}]", t, f"logits_per_level[{i}]", x)
            if self.sampling == "image" and x.dim() != 3:
                raise ValueError(
                    "sampling='image' needs every level shaped [B, A_l, C] (images first); "
                    f"logits_per_level[{i}] has shape {tuple(x.shape)}"
                )
            if x.dim() not in (2, 3):
                raise ValueError(
                    f"logits_per_level[{i}] must be [N_l, C] or [B, A_l, C], got shape "
                    f"{tuple(x.shape)}"
                )
            # Levels are concatenated along the anchor dimension: the other sizes must agree.
            if (
                x.dim() != first.dim()
                or x.shape[-1] != first.shape[-1]
                or (x.dim() == 3 and x.shape[0] != first.shape[0])
            ):
                raise ValueError(
                    f"logits_per_level[{i}] has shape {tuple(x.shape)}, incompatible with "
                    f"logits_per_level[0] of shape {tuple(first.shape)} (same rank, classes and "
                    "images needed)"
                )

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        """Sum over levels of the per-level loss with that level's (gamma_ad, alpha_ad),
        divided by `normalizer`: the positives over all levels and processes (the official
        code: all-reduced count / world size, at least 1)."""
        self._check_inputs(logits_per_level, targets_per_level, valid_per_level)
        if not torch.is_tensor(normalizer) and normalizer <= 0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")
        # All levels are processed as one tensor (few large ops instead of a few per level).
        dim = logits_per_level[0].dim() - 2  # anchor dimension: 0 for [N, C], 1 for [B, A, C]
        sizes = [x.shape[dim] for x in logits_per_level]
        x = torch.cat([x.float() for x in logits_per_level], dim)
        t = torch.cat([t.float() for t in targets_per_level], dim)
        check_finite_all("logits_per_level", logits_per_level, joined=x)
        v = None
        if valid_per_level is not None:
            masks = [
                as_valid_mask(m, xl, f"valid_per_level[{i}]")
                for i, (m, xl) in enumerate(zip(valid_per_level, logits_per_level))
            ]
            # Per-anchor masks stay [..., 1]; any per-entry mask makes them all [..., C].
            last = (1,) if all(m.shape[-1] == 1 for m in masks) else x.shape[-1:]
            v = torch.cat(
                [m.expand(xl.shape[:-1] + last) for m, xl in zip(masks, logits_per_level)], dim
            )

        positive = self.positives(t)
        if v is not None:
            positive = torch.where(v, positive, 0.0)
        neg_log_p, cache = self.level_terms(x, t)
        with torch.no_grad():
            if self.estimator == "mean_log":
                values = F.softplus(-x) if neg_log_p is None else neg_log_p
            else:
                values = torch.sigmoid(x)
            # Per-anchor sums over classes, then per level (or per image).
            row = torch.stack([(values * positive).sum(-1), positive.sum(-1)], -1)
        num_levels = len(sizes)
        if self.sampling == "image":
            # Per-image statistic over all levels; images are process-local, no all-reduce.
            stats = row.sum(1)  # [B, 2]
        else:
            if dim == 1:
                row = row.sum(0)  # [A, 2]: the images of this process pooled
            stats = torch.stack([part.sum(0) for part in row.split(sizes)])  # [L, 2]
            # One all-reduce of every level's (sum, count): exact global statistics.
            stats = all_reduce_sum(stats)
            if self.sampling == "all":
                stats = stats.sum(0, keepdim=True).expand(num_levels, 2)
        gamma_ad, alpha_ad = focus_params_from_stats(
            stats[:, 0], stats[:, 1], self.gamma, self.delta, self.w, self.estimator
        )
        if self.sampling == "image":
            g, a = gamma_ad.view(-1, 1, 1), alpha_ad.view(-1, 1, 1)
            self.last_gamma = gamma_ad.expand(num_levels, -1).clone()
            self.last_alpha = alpha_ad.expand(num_levels, -1).clone()
        else:
            # One value per anchor row, broadcast over classes (and images).
            shape = (-1, 1) if dim == 0 else (1, -1, 1)
            g, a = (
                torch.cat([p[i].expand(n) for i, n in enumerate(sizes)]).view(shape)
                for p in (gamma_ad, alpha_ad)
            )
            self.last_gamma, self.last_alpha = gamma_ad.clone(), alpha_ad.clone()
        loss = self.elementwise(x, t, g, a, cache)
        if v is not None:
            loss = torch.where(v, loss, 0.0)
        return loss.sum() / normalizer


class ProgressiveFocalLoss(_ProgressiveLoss):
    """HPF (Eq. 2) with gamma_ad/alpha_ad per level ("level", Eq. 5), for all levels together
    ("all") or per image ("image", our reading of Table 5's "per-sample").

    Positives are entries with target 1. Note Eq. 5 averages the levels (1/L); the official
    code sums them and divides by the positive count, which is what this module does.
    :meth:`metrics` gives the gamma_ad / alpha_ad of the last forward per level.

    Args:
        gamma: the base gamma; gamma_ad is clamped to [gamma - delta, gamma + delta] (Eq. 3).
        delta: the half-width of that range.
        w: alpha_ad = w / gamma_ad (Eq. 4).
        sampling: "level", "all" or "image": what one (gamma_ad, alpha_ad) is computed over.
        estimator: "mean_log" (mean of -log p over the positives, the official code) or
            "log_mean" (-log of their mean p, Eq. 3 as printed).
    """

    def positives(self, targets):
        return targets  # 0/1 targets: the target itself marks the positives (target == 1)

    def level_terms(self, logits, targets):
        parts = binary_focal_parts(logits, targets)
        return parts[1], parts  # -log p_t, which is -log sigma(x) at the positives

    def elementwise(self, logits, targets, gamma, alpha, cache):
        return focal_terms(logits, targets, alpha, gamma, parts=cache)


class ProgressiveQualityFocalLoss(_ProgressiveLoss):
    """PF-QFL (HPF Eq. 6): QFL with beta -> gamma_ad and the alpha_ad / 1 - alpha_ad balance.

    Same constructor and forward as ProgressiveFocalLoss; positives are entries with
    score target > 0 and the statistic is -log sigma(x) over them (unweighted by q).
    """

    uses_quality_targets = True  # IoU of the decoded box with its ground truth

    def positives(self, targets):
        return (targets > 0).float()

    def level_terms(self, logits, targets):
        log_terms = neg_log_probs(logits)
        return log_terms[1], log_terms

    def elementwise(self, logits, targets, gamma, alpha, cache):
        return quality_focal_terms(logits, targets, gamma, alpha, log_terms=cache)


class ProgressiveVarifocalLoss(_ProgressiveLoss):
    """PF-VFL (HPF Eq. 7): VFL with alpha -> alpha_ad and gamma -> gamma_ad.

    Same constructor and forward as ProgressiveFocalLoss; positives are entries with
    score target > 0. VFL's alpha (0.75) weighs only the negatives; the paper's rule
    w = alpha * gamma would give w = 1.5 here, while the shared default w = 0.5 gives
    alpha_ad = 0.25 at gamma_ad = 2. Set w explicitly (see projects/HPF/README.md).
    """

    uses_quality_targets = True  # IoU of the decoded box with its ground truth

    def positives(self, targets):
        return (targets > 0).float()

    def level_terms(self, logits, targets):
        # BCE(x, q) is not -log p for soft q: the statistic computes softplus(-x) itself.
        return None, F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    def elementwise(self, logits, targets, gamma, alpha, cache):
        return varifocal_terms(logits, targets, alpha, gamma, ce=cache)
