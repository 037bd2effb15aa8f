"""Losses of HPF, QFL/VFL (+ progressive forms), GHM and Sampling-Free; pure torch."""

from .focal import sigmoid_focal_loss
from .ghm import GHMC, GHMR
from .ohem import OHEMLoss
from .pyramid import (
    FocalLoss,
    GHMCLoss,
    GHMRLoss,
    QualityFocalLoss,
    SamplingFreeCELoss,
    VarifocalLoss,
)
from .progressive_focal import ProgressiveFocalLoss, progressive_focus_params
from .quality_focal import (
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    quality_focal_loss,
    varifocal_loss,
)
from .guided_scaling import GuidedLossScale, guided_loss_scale
from .sampling_free import (
    adaptive_threshold,
    optimal_prior,
    prior_bias,
    sampling_free_ce_loss,
)
from .utils import reduce_loss

__all__ = [
    "FocalLoss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "SamplingFreeCELoss",
    "GHMCLoss",
    "GHMRLoss",
    "OHEMLoss",
    "sigmoid_focal_loss",
    "progressive_focus_params",
    "ProgressiveFocalLoss",
    "quality_focal_loss",
    "varifocal_loss",
    "ProgressiveQualityFocalLoss",
    "ProgressiveVarifocalLoss",
    "GHMC",
    "GHMR",
    "guided_loss_scale",
    "GuidedLossScale",
    "optimal_prior",
    "prior_bias",
    "adaptive_threshold",
    "sampling_free_ce_loss",
    "reduce_loss",
]
