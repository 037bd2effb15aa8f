# Ablation of the shapes Faster R-CNN pair: Sampling-Free in the RPN only (RoI heads sample);
# the box losses of the pair (smooth L1).
from hpf.config import use_sampling_free_rpn

from .faster_rcnn_R18h_FPN_smooth_l1 import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
train.foreground_stats_images = 200
train.output_dir = "output/shapes_faster_rcnn_sampling_free_rpn"
