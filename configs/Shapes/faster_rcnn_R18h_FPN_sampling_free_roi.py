# Ablation of the shapes Faster R-CNN pair: Sampling-Free in the RoI heads only (the RPN samples);
# the box losses of the pair (smooth L1).
from hpf.config import use_sampling_free_roi_heads

from .faster_rcnn_R18h_FPN_smooth_l1 import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_roi_heads(model)
train.output_dir = "output/shapes_faster_rcnn_sampling_free_roi"
