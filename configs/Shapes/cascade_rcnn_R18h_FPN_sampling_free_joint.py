# Sampling-Free Cascade R-CNN whose RoI stages share one guided ratio (the summed box losses
# over the summed classification losses) instead of one ratio each.
from hpf.config import use_sampling_free_roi_heads

from .cascade_rcnn_R18h_FPN_sampling_free import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_roi_heads(model, smooth_l1_beta=1.0, cascade_guided_scaling="joint")
train.output_dir = "output/shapes_cascade_rcnn_sampling_free_joint"
