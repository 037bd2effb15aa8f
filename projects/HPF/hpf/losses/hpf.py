"""
HPF (Hierarchical Progressive Focus): progressive focus (Eq. 2-4) with hierarchical sampling
(Eq. 5, Algorithm 1), on the focal loss (ProgressiveFocalLoss), on QFL (PF-QFL, Eq. 6) and on
VFL (PF-VFL, Eq. 7).

A forward runs in two stages over the levels, which stay separate tensors (no concatenated
copy): the first computes the terms that do not depend on gamma_ad and, from them, each level's
(or image's) sum of the statistic and count of positives; one all-reduce and one host sync later
(gamma_ad, alpha_ad) are known per level (or image) and the second stage computes the loss with
them as broadcast scalars. Everything is float32 whatever the logits' dtype or autocast.
"""

import torch
import torch.nn.functional as F

from .baselines import quality_focal_terms, varifocal_terms
from .contract import ClassificationLoss
from .utils import (
    all_reduce_sum,
    as_valid_mask,
    check_finite,
    check_finite_all,
    check_same_shape,
    float32_region,
    sum_of_products,
    with_precomputed_gradients,
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
        values = torch.sigmoid(logits) if neg_log_p is None else torch.exp(-neg_log_p)
    if dims is None:
        return sum_of_products(values, positive), positive.sum()
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
    """(gamma_ad, alpha_ad) of Eq. 3-4 from the entries whose target is 1; 0-dim, float32, no
    gradient.

    In a distributed run the sums and counts are all-reduced, so the result is the statistic of
    the concatenated inputs of all processes (every process must call this).
    """
    _check_focus_args(gamma, delta, w, estimator)
    check_same_shape("targets", targets, "logits", logits)
    check_finite("logits", logits)
    with float32_region(logits.device):
        positive = (targets == 1).float()
        stat_sum, count = positive_stats(logits.float(), positive, estimator)
        stat_sum, count = all_reduce_sum(torch.stack([stat_sum, count]))
        return focus_params_from_stats(stat_sum, count, gamma, delta, w, estimator)


# ---------------------------------------------------------------------------------------------
# The focal loss of HPF Eq. 2, fused. With z = (1 - 2y) x (so p_t = sigma(-z), Eq. 1):
#   ce = -log p_t = softplus(z),   q = 1 - p_t = sigma(z),   log q = z - ce,
#   FL = alpha_t q^gamma ce,       q^gamma = exp(gamma log q)  (one exp for any gamma),
#   dFL/dz = alpha_t q^gamma (gamma p_t ce + q)   (dq/dz = q p_t, dce/dz = q),
#   dFL/dx = (1 - 2y) dFL/dz.
# gamma_ad and alpha_ad are constants of the loss (no gradient flows into them, as in the
# official code), so this is the whole gradient; it is computed with the value and kept instead
# of autograd's intermediates.


def _focal_terms_before_focus(x, t):
    """(z, ce) of the comment above; ce is -log sigma(x) at the positives (Eq. 3's statistic).

    z = x - 2 y x is NaN wherever x is NaN or +-inf (0 * inf or inf - inf), and so is ce: the
    statistic's sums double as the finiteness check of the logits.
    """
    z = torch.addcmul(x, t, x, value=-2.0)
    return z, F.softplus(z)


def _focal_value_and_grad(z, ce, t, gamma, alpha, valid, need_grad):
    """sum FL (the fused form above) and dFL/dx; `z` is overwritten. gamma, alpha: 0-dim, or
    ``[B, 1, 1]`` per image."""
    q = torch.sigmoid(z)
    modulator = z.sub_(ce).mul_(gamma).exp_()  # q^gamma
    if valid is not None:
        modulator.mul_(valid)
    # alpha_t = 1 - alpha + (2 alpha - 1) y is never materialised: sum alpha_t q^gamma ce
    # = (1 - alpha) sum q^gamma ce + (2 alpha - 1) sum y q^gamma ce.
    unbalanced = modulator * ce
    if alpha.dim() == 0:
        sums, positive_sums = unbalanced.sum(), sum_of_products(unbalanced, t)
    else:  # per image
        sums = unbalanced.sum((1, 2))
        positive_sums = torch.stack([sum_of_products(u, y) for u, y in zip(unbalanced, t)])
    flat_alpha = alpha.view(-1) if alpha.dim() else alpha
    value = ((1.0 - flat_alpha) * sums + (2.0 * flat_alpha - 1.0) * positive_sums).sum()
    if not need_grad:
        return value, None
    del unbalanced  # lower peak memory
    # Every term positive: no cancellation for confident mistakes (ce large, p_t tiny).
    grad = torch.rsub(q, 1.0).mul_(gamma)  # gamma p_t
    torch.addcmul(q, grad, ce, out=grad)  # gamma p_t ce + q
    # (1 - 2y) alpha_t = 1 - alpha - y for y in {0, 1}.
    grad.mul_(modulator).mul_(torch.sub(1.0 - alpha, t))
    return value, grad


def _focal_stage_one(x, t, positive, per_image):
    """Compiled stage 1 (see ``compile``): the statistic sums without intermediate tensors."""
    z = x - 2.0 * t * x
    ce = F.softplus(z)
    if per_image:
        return (ce * positive).sum((1, 2)), positive.sum((1, 2))
    return (ce * positive).sum(), positive.sum()


def _focal_stage_two(x, t, gamma, alpha, valid, need_grad: bool):
    """Compiled stage 2: the focal value and gradient of :func:`_focal_value_and_grad`,
    recomputed from x in one fused loop instead of kept from stage 1."""
    sign = 1.0 - 2.0 * t
    z = sign * x
    ce = F.softplus(z)
    q = torch.sigmoid(z)
    weight = torch.exp(gamma * (z - ce)) * (t * alpha + (1.0 - t) * (1.0 - alpha))
    if valid is not None:
        weight = weight * valid
    value = (weight * ce).sum()
    if not need_grad:
        return value, None
    return value, sign * weight * (gamma * (1.0 - q) * ce + q)


class _ProgressiveLoss(ClassificationLoss):
    """Shared forward of the progressive losses; subclasses give the element-wise loss."""

    def __init__(
        self, gamma=2.0, delta=0.5, w=0.5, sampling="level", estimator="mean_log", compile=False,
        loss_weight=1.0,
    ):
        super().__init__()
        _check_focus_args(gamma, delta, w, estimator)
        if not loss_weight > 0:
            raise ValueError(f"loss_weight must be > 0, got {loss_weight}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.gamma, self.delta, self.w = float(gamma), float(delta), float(w)
        self.sampling, self.estimator = sampling, estimator
        self.compile = bool(compile)
        self.loss_weight = float(loss_weight)
        # gamma_ad / alpha_ad used by the last forward, per level ([L]; [L, B] for "image").
        self.last_gamma = None
        self.last_alpha = None

    def extra_repr(self):
        text = (
            f"gamma={self.gamma}, delta={self.delta}, w={self.w}, "
            f"sampling={self.sampling!r}, estimator={self.estimator!r}"
        )
        if self.loss_weight != 1.0:
            text += f", loss_weight={self.loss_weight}"
        return text + (", compile=True" if self.compile else "")

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
        """Stage 1, before gamma_ad is known: (-log sigma(x) at least at the positives, NaN or
        inf wherever a logit is; a cache handed to :meth:`level_loss`)."""
        raise NotImplementedError

    def level_loss(self, logits, targets, cache, gamma, alpha, valid, need_grad):
        """Stage 2: (summed loss, its gradient w.r.t. the logits or None) with the given
        gamma_ad / alpha_ad (0-dim, or ``[B, 1, 1]`` per image). A loss that returns no gradient
        returns a sum differentiable by autograd instead."""
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
            # The levels form one pyramid: the other sizes must agree.
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
        with float32_region(logits_per_level[0].device):
            total = self._summed_loss(logits_per_level, targets_per_level, valid_per_level)
        if self.loss_weight != 1.0:
            total = total * self.loss_weight
        return total / normalizer

    def _summed_loss(self, logits_per_level, targets_per_level, valid_per_level):
        per_image = self.sampling == "image"
        # float32 statistics and loss whatever the logits' dtype (no copy for float32 inputs).
        xs = [x.float() for x in logits_per_level]
        ts = [t.float() for t in targets_per_level]
        vs = [None] * len(xs)
        if valid_per_level is not None:
            vs = [
                as_valid_mask(m, x, f"valid_per_level[{i}]")
                for i, (m, x) in enumerate(zip(valid_per_level, xs))
            ]
        need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in logits_per_level)

        # Stage 1: terms independent of gamma_ad, and the statistic's sums per level (Eq. 3).
        caches, rows, probes = [], [], []
        for x, t, v in zip(xs, ts, vs):
            positive = self.positives(t)
            if v is not None:
                positive = positive * v
            stat, count, probe, cache = self._stage_one(x, t, positive, per_image)
            caches.append(cache)
            rows.append(torch.stack([stat, count], -1))  # [2], or [B, 2] per image
            probes.append(probe)
        local = torch.stack(rows)  # [L, 2] or [L, B, 2]
        local_ok = torch.isfinite(torch.stack(probes)).all()
        if per_image:
            # One statistic per image over all levels; images are process-local: no all-reduce.
            stats = local.sum(0)  # [B, 2]
        else:
            # One all-reduce of every level's (sum, count): exact global statistics.
            stats = all_reduce_sum(local)
            if self.sampling == "all":
                stats = stats.sum(0, keepdim=True).expand(len(xs), 2)
        gamma_ad, alpha_ad = focus_params_from_stats(
            stats[..., 0], stats[..., 1], self.gamma, self.delta, self.w, self.estimator
        )
        # The only host sync: non-finite logits here, or in another process (whose sums
        # reached this one through the all-reduce; all processes then raise, none hangs).
        local_ok, global_ok = torch.stack([local_ok, torch.isfinite(stats).all()]).tolist()
        if not local_ok:
            check_finite_all("logits_per_level", logits_per_level)
            check_finite_all("targets_per_level", targets_per_level)
        if not global_ok:
            raise FloatingPointError(
                "the statistic of gamma_ad is NaN or inf: another process has NaN or inf logits"
            )

        # Stage 2: the loss with each level's (image's) gamma_ad / alpha_ad as scalars.
        num_levels = len(xs)
        if per_image:
            self.last_gamma = gamma_ad.expand(num_levels, -1).clone()
            self.last_alpha = alpha_ad.expand(num_levels, -1).clone()
            gammas = [gamma_ad.view(-1, 1, 1)] * num_levels
            alphas = [alpha_ad.view(-1, 1, 1)] * num_levels
        else:
            self.last_gamma, self.last_alpha = gamma_ad.clone(), alpha_ad.clone()
            gammas, alphas = gamma_ad.unbind(), alpha_ad.unbind()
        results = [
            self._stage_two(x, t, cache, g, a, v, need_grad)
            for x, t, v, cache, g, a in zip(xs, ts, vs, caches, gammas, alphas)
        ]
        total = torch.stack([value for value, _ in results]).sum()
        grads = [grad for _, grad in results]
        if any(grad is not None for grad in grads):
            return with_precomputed_gradients(total, grads, logits_per_level)
        return total  # no gradient needed, or left to autograd by the subclass

    def _stage_one(self, x, t, positive, per_image):
        """(stat sum, positive count, finiteness probe, cache) of one level."""
        compiled = self._compiled_stages() if self.compile else None
        if compiled is not None:
            stat, count = compiled["one"](x, t, positive, per_image)
            # Compiled code may assume finite math: the probe is a plain sum of the logits.
            return stat, count, x.detach().sum(), None
        neg_log_p, cache = self.level_terms(x, t)
        with torch.no_grad():
            neg_log_p = neg_log_p.detach()
            values = neg_log_p if self.estimator == "mean_log" else torch.exp(-neg_log_p)
            if per_image:
                stat = torch.stack([sum_of_products(v, p) for v, p in zip(values, positive)])
                count = positive.sum((1, 2))
            else:
                stat, count = sum_of_products(values, positive), positive.sum()
            # mean_log: the statistic is NaN or inf with the logits (see level_terms);
            # log_mean's sigma(x) is not, so its probe is a sum of -log sigma(x).
            probe = stat if self.estimator == "mean_log" else neg_log_p.sum()
        return stat, count, probe, cache

    def _stage_two(self, x, t, cache, gamma, alpha, valid, need_grad):
        if cache is None:  # compiled stage 1
            return self._compiled_stages()["two"](x, t, gamma, alpha, valid, need_grad)
        return self.level_loss(x, t, cache, gamma, alpha, valid, need_grad)

    def _compiled_stages(self):
        """The torch.compile'd stages of a loss that has them (ProgressiveFocalLoss with the
        mean_log estimator), else None."""
        return None


class ProgressiveFocalLoss(_ProgressiveLoss):
    """HPF (Eq. 2) with gamma_ad/alpha_ad per level ("level", Eq. 5), for all levels together
    ("all") or per image ("image", our reading of Table 5's "per-sample").

    Positives are entries with target 1. Note Eq. 5 averages the levels (1/L); the official
    code sums them and divides by the positive count, which is what this module does.
    :meth:`metrics` gives the gamma_ad / alpha_ad of the last forward per level.

    The statistics, gamma_ad / alpha_ad and the loss are float32 whatever the logits' dtype
    (also under autocast); the gradient is computed with the value (see the fused form above).

    Args:
        gamma: the base gamma; gamma_ad is clamped to [gamma - delta, gamma + delta] (Eq. 3).
        delta: the half-width of that range.
        w: alpha_ad = w / gamma_ad (Eq. 4).
        sampling: "level", "all" or "image": what one (gamma_ad, alpha_ad) is computed over.
        estimator: "mean_log" (mean of -log p over the positives, the official code) or
            "log_mean" (-log of their mean p, Eq. 3 as printed).
        compile: run the two element-wise stages through ``torch.compile`` (one fused loop
            each, no intermediate tensors). Off by default: the first calls compile for tens of
            seconds and it needs a working compiler (a C++ compiler on CPU, Triton on CUDA).
        loss_weight: a constant factor on the loss (default 1). PF-QFL with w = 1 and
            loss_weight = 2 equals QFL at gamma_ad = 2 (Eq. 6 with alpha_ad = 1/2 is half of
            QFL), as HPF with w = 0.5 equals focal loss.
    """

    def positives(self, targets):
        return targets  # 0/1 targets: the target itself marks the positives (target == 1)

    def level_terms(self, logits, targets):
        with torch.no_grad():
            z, ce = _focal_terms_before_focus(logits, targets)
        return ce, (z, ce)  # ce = -log p_t is -log sigma(x) at the positives

    def level_loss(self, logits, targets, cache, gamma, alpha, valid, need_grad):
        with torch.no_grad():
            return _focal_value_and_grad(*cache, targets, gamma, alpha, valid, need_grad)

    def _compiled_stages(self):
        return _compiled_focal_stages() if self.estimator == "mean_log" else None


_COMPILED = {}


def _compiled_focal_stages():
    """Both compiled stages, built once per process (dynamic shapes: one compilation serves
    every level and image size); errors of torch.compile name the flag that asked for it."""
    if not _COMPILED:
        for name, fn in (("one", _focal_stage_one), ("two", _focal_stage_two)):
            _COMPILED[name] = _compile_errors_named(torch.compile(fn, dynamic=True))
    return _COMPILED


def _compile_errors_named(compiled):
    def run(*args):
        try:
            with torch.no_grad():
                return compiled(*args)
        except Exception as e:
            # Dynamo / inductor failures (no C++ compiler, no Triton, ...); others propagate.
            if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise RuntimeError(
                "ProgressiveFocalLoss(compile=True), i.e. the config flag "
                "model.cls_loss.compile=True, needs a working torch.compile, which failed here "
                f"({type(e).__name__}: {first_line}); set compile=False"
            ) from e

    return run


class ProgressiveQualityFocalLoss(_ProgressiveLoss):
    """PF-QFL (HPF Eq. 6): QFL with beta -> gamma_ad and the alpha_ad / 1 - alpha_ad balance.

    Same constructor and forward as ProgressiveFocalLoss (``compile`` is accepted and has no
    effect); positives are entries with score target > 0 and the statistic is -log sigma(x)
    over them (unweighted by q). QFL has no alpha: Eq. 6 with alpha_ad = 1/2 is half of QFL, so
    w = 1 (the paper's w = alpha * gamma with QFL's even balance) and loss_weight = 2 make
    PF-QFL equal QFL at gamma_ad = 2; the shared default w = 0.5 weighs its positives a third
    of its negatives. Set both explicitly (see projects/HPF/README.md).
    """

    uses_quality_targets = True  # IoU of the decoded box with its ground truth

    def positives(self, targets):
        return (targets > 0).float()

    def level_terms(self, logits, targets):
        neg_log_1mp = F.softplus(logits)  # -log(1 - p)
        # -log p = softplus(x) - x: NaN or inf with x (inf - inf, 0 - -inf).
        neg_log_p = neg_log_1mp - logits
        return neg_log_p, (neg_log_1mp, neg_log_p)

    def level_loss(self, logits, targets, cache, gamma, alpha, valid, need_grad):
        loss = quality_focal_terms(logits, targets, gamma, alpha, log_terms=cache)
        return _masked_sum(loss, valid), None


class ProgressiveVarifocalLoss(_ProgressiveLoss):
    """PF-VFL (HPF Eq. 7): VFL with alpha -> alpha_ad and gamma -> gamma_ad.

    Same constructor and forward as ProgressiveFocalLoss (``compile`` is accepted and has no
    effect); positives are entries with score target > 0. VFL's alpha (0.75) weighs only the
    negatives; the paper's rule w = alpha * gamma would give w = 1.5 here, while the shared
    default w = 0.5 gives alpha_ad = 0.25 at gamma_ad = 2. Set w explicitly (see
    projects/HPF/README.md).
    """

    uses_quality_targets = True  # IoU of the decoded box with its ground truth

    def positives(self, targets):
        return (targets > 0).float()

    def level_terms(self, logits, targets):
        softplus = F.softplus(logits)
        with torch.no_grad():
            neg_log_p = softplus - logits  # -log sigma(x), NaN or inf with x
        # BCE(x, q) = softplus(x) - q x (not -log p for soft q).
        return neg_log_p, torch.addcmul(softplus, targets, logits, value=-1.0)

    def level_loss(self, logits, targets, cache, gamma, alpha, valid, need_grad):
        loss = varifocal_terms(logits, targets, alpha, gamma, ce=cache)
        return _masked_sum(loss, valid), None


def _masked_sum(loss, valid):
    return (loss if valid is None else torch.where(valid, loss, 0.0)).sum()
