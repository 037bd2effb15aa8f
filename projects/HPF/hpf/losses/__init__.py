"""
Losses of HPF, GHM and Sampling-Free and the baselines they build on; pure torch.

contract.py holds the interface a detector calls; each paper has one file: baselines.py (focal,
QFL, VFL), distribution_focal.py (GFL's DFL), hpf.py (progressive focus), ghm.py (GHM-C,
GHM-R), sampling_free.py (CE, guided loss scaling, prior and threshold), ohem.py.
"""

from .baselines import (
    FocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)
from .distribution_focal import DistributionFocalLoss, distribution_focal_loss
from .contract import BoxRegressionLoss, ClassificationLoss, check_loss_type
from .ghm import GHMCLoss, GHMRLoss
from .hpf import (
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    progressive_focus_params,
)
from .ohem import OHEMLoss
from .sampling_free import (
    GuidedLossScale,
    SamplingFreeCELoss,
    adaptive_threshold,
    guided_loss_scale,
    optimal_prior,
    prior_bias,
    sampling_free_ce_loss,
)
from .utils import reduce_loss

__all__ = [
    # contract
    "BoxRegressionLoss",
    "ClassificationLoss",
    "check_loss_type",
    # baselines
    "FocalLoss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "sigmoid_focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
    # GFL
    "DistributionFocalLoss",
    "distribution_focal_loss",
    # HPF
    "ProgressiveFocalLoss",
    "ProgressiveQualityFocalLoss",
    "ProgressiveVarifocalLoss",
    "progressive_focus_params",
    # GHM
    "GHMCLoss",
    "GHMRLoss",
    "OHEMLoss",
    # Sampling-Free
    "SamplingFreeCELoss",
    "GuidedLossScale",
    "guided_loss_scale",
    "optimal_prior",
    "prior_bias",
    "adaptive_threshold",
    "sampling_free_ce_loss",
    # helpers
    "reduce_loss",
]
