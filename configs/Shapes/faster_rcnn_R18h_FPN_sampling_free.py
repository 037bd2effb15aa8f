# Faster R-CNN with Sampling-Free in the RPN and the RoI heads on the shapes dataset: the
# settings of its baseline, faster_rcnn_R18h_FPN_smooth_l1.py, otherwise (box losses included).
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn

from .faster_rcnn_R18h_FPN_smooth_l1 import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
use_sampling_free_roi_heads(model)
train.foreground_stats_images = 200
train.output_dir = "output/shapes_faster_rcnn_sampling_free"
