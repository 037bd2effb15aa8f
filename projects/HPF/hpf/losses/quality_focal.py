"""QFL (GFL), VFL (VarifocalNet) and their progressive forms PF-QFL / PF-VFL (HPF Eq. 6-7).

`score_targets` are IoU-quality targets in [0, 1] (0 = negative). The modulating factors are
not detached, as in the official QFL/VFL code.
"""

import torch
import torch.nn.functional as F

from .progressive_focal import _ProgressiveLoss
from .utils import check_finite, check_same_shape, reduce_loss


def quality_focal_terms(logits, q, gamma, alpha=None, log_terms=None):
    """-|q - p|^gamma ((1 - alpha)(1 - q) log(1 - p) + alpha q log p)  (HPF Eq. 6).

    With alpha=None both terms have weight 1: plain QFL with beta = gamma (GFL's form).
    `log_terms` may pass (-log(1 - p), -log p) when the caller already has them.
    """
    modulator = (q - torch.sigmoid(logits)).abs().pow(gamma)
    if alpha is None:
        return F.binary_cross_entropy_with_logits(logits, q, reduction="none") * modulator
    neg_log_1mp, neg_log_p = log_terms if log_terms is not None else _neg_logs(logits)
    return modulator * ((1 - alpha) * (1 - q) * neg_log_1mp + alpha * q * neg_log_p)


def _neg_logs(logits):
    neg_log_1mp = F.softplus(logits)  # -log(1 - p)
    return neg_log_1mp, neg_log_1mp - logits  # -log p = softplus(-x) = softplus(x) - x


def varifocal_terms(logits, q, alpha, gamma, ce=None):
    """q * BCE(x, q) for q > 0 and alpha p^gamma BCE(x, 0) for q = 0 (VFL; HPF Eq. 7)."""
    if ce is None:
        ce = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
    # Where q = 0, BCE = softplus(x) and log p = x - softplus(x): p^gamma = exp(gamma (x - BCE)),
    # one exp instead of a sigmoid and a pow (log + exp) for any gamma. The clamp keeps the
    # unused q > 0 entries from overflowing (inf * 0 would give NaN gradients).
    negative_weight = alpha * torch.exp((gamma * (logits - ce)).clamp_max(0.0))
    return ce * torch.where(q > 0, q, negative_weight)


def _checked(logits, score_targets):
    check_same_shape("score_targets", score_targets, "logits", logits)
    check_finite("logits", logits)
    return logits.float(), score_targets.float()


def quality_focal_loss(logits, score_targets, beta=2.0, reduction="none"):
    """Quality Focal Loss: -|q - p|^beta ((1 - q) log(1 - p) + q log p)."""
    x, q = _checked(logits, score_targets)
    return reduce_loss(quality_focal_terms(x, q, beta), reduction)


def varifocal_loss(logits, score_targets, alpha=0.75, gamma=2.0, reduction="none"):
    """Varifocal Loss (IoU-weighted positives, focal-weighted negatives)."""
    x, q = _checked(logits, score_targets)
    return reduce_loss(varifocal_terms(x, q, alpha, gamma), reduction)


class ProgressiveQualityFocalLoss(_ProgressiveLoss):
    """PF-QFL (HPF Eq. 6): QFL with beta -> gamma_ad and the alpha_ad / 1 - alpha_ad balance.

    Same constructor and forward as ProgressiveFocalLoss; positives are entries with
    score target > 0 and the statistic is -log sigma(x) over them (unweighted by q).
    """

    def positives(self, targets):
        return (targets > 0).float()

    def level_terms(self, logits, targets):
        log_terms = _neg_logs(logits)
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

    def positives(self, targets):
        return (targets > 0).float()

    def level_terms(self, logits, targets):
        # BCE(x, q) is not -log p for soft q: the statistic computes softplus(-x) itself.
        return None, F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    def elementwise(self, logits, targets, gamma, alpha, cache):
        return varifocal_terms(logits, targets, alpha, gamma, ce=cache)
