"""Box losses of an R-CNN model config, set by mutating it."""


def use_smooth_l1_box_losses(model, rpn_beta=1.0 / 9, roi_beta=1.0):
    """maskrcnn-benchmark's box losses, which the Sampling-Free paper's Faster / Mask R-CNN rows
    (baseline and Sampling-Free alike) were trained with: smooth L1 with beta 1/9 in the RPN and
    beta 1 in the RoI heads (every stage of a cascade), instead of detectron2's L1."""
    model.proposal_generator.smooth_l1_beta = rpn_beta
    roi_heads = model.roi_heads
    predictors = roi_heads.box_predictors if "box_predictors" in roi_heads else [roi_heads.box_predictor]
    for predictor in predictors:
        predictor.smooth_l1_beta = roi_beta
