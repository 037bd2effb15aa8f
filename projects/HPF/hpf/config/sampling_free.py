"""Sampling-Free variants of an R-CNN model config, built by mutating it (one call each)."""
from detectron2.config import LazyCall as L

from hpf.losses import GuidedLossScale
from hpf.modeling import (
    SamplingFreeCascadeROIHeads,
    SamplingFreeFastRCNNOutputLayers,
    SamplingFreeROIHeads,
    SamplingFreeRPN,
)


def use_sampling_free_rpn(model, prior_prob="auto", guided_factor=1.0, keep_sampling=False,
                          guided_scaling=True):
    """RPN on all anchors: objectness CE / #positives, guided to ``guided_factor`` x the RPN
    box loss (the official RPN's 1, ratio every iteration; other values for ablations),
    objectness bias from pi = N_f / N ("auto"). The box loss is the official one's scale: half
    the mean over the positive anchors' coordinates. ``keep_sampling`` / ``guided_scaling``
    switch sampling back on / guided scaling off, independently (the paper's Table 4 hybrids)."""
    model.proposal_generator._target_ = SamplingFreeRPN
    model.proposal_generator.box_reg_normalizer = "foreground"
    model.proposal_generator.keep_sampling = keep_sampling
    model.proposal_generator.loss_weight = {"loss_rpn_cls": 1.0, "loss_rpn_loc": 0.5}
    model.proposal_generator.loss_balance = (
        L(GuidedLossScale)(factor=guided_factor) if guided_scaling else None
    )
    model.proposal_generator.prior_prob = prior_prob


def use_sampling_free_roi_heads(
    model, test_score_thresh=1e-3, smooth_l1_beta=None, guided_factor=2.0,
    cascade_guided_scaling="per_stage", keep_sampling=False, guided_scaling=True,
):
    """RoI heads on all proposals (+ GT); each box predictor's softmax CE guided to
    ``guided_factor`` x its own box loss (the paper's 2; other values for ablations, every
    cascade stage alike). ``cascade_guided_scaling="joint"``: Cascade R-CNN's stages share one
    ratio, their summed box losses over their summed CE (the paper's "multiple RoI-subnets as
    one RoI-subnet", read as one ratio). ``test_score_thresh``: the official code's 1e-3, or
    "auto" (N_f / N of the RoIs seen in training), or detectron2's 0.05. ``smooth_l1_beta``:
    None keeps the base config's RoI box loss (so that the pair differs in sampling alone);
    a number sets it (the official Sampling-Free RoI head: smooth L1 with beta 1). It matters
    more than under sampling: the guided ratio ties the classification loss to the box loss's
    value. ``keep_sampling`` keeps
    detectron2's mini-batch biased sampling of the RoIs; ``guided_scaling=False`` leaves the CE
    unscaled (independent switches: the paper's Table 4 hybrids)."""
    roi_heads = model.roi_heads
    cascade = "box_predictors" in roi_heads
    if cascade_guided_scaling not in ("per_stage", "joint"):
        raise ValueError(
            f"cascade_guided_scaling must be 'per_stage' or 'joint', got {cascade_guided_scaling!r}"
        )
    joint = cascade_guided_scaling == "joint"
    if joint and not cascade:
        raise ValueError("cascade_guided_scaling='joint' needs a Cascade R-CNN model config")
    if joint and (keep_sampling or not guided_scaling):
        raise ValueError("cascade_guided_scaling='joint' needs guided_scaling=True and "
                         "keep_sampling=False")
    if not keep_sampling:
        roi_heads._target_ = SamplingFreeCascadeROIHeads if cascade else SamplingFreeROIHeads
    if joint:
        roi_heads.joint_loss_balance = L(GuidedLossScale)(factor=guided_factor)
    per_stage = guided_scaling and not joint
    for predictor in roi_heads.box_predictors if cascade else [roi_heads.box_predictor]:
        predictor._target_ = SamplingFreeFastRCNNOutputLayers
        predictor.scale_classification = per_stage
        predictor.loss_balance = L(GuidedLossScale)(factor=guided_factor) if per_stage else None
        predictor.test_score_thresh = test_score_thresh
        if smooth_l1_beta is not None:
            predictor.smooth_l1_beta = smooth_l1_beta
