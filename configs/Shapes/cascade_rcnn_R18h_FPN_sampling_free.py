# Cascade R-CNN with Sampling-Free in the RPN and every RoI stage on the shapes dataset.
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn

from .cascade_rcnn_R18h_FPN import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
use_sampling_free_roi_heads(model, smooth_l1_beta=1.0)
train.foreground_stats_images = 200
train.output_dir = "output/shapes_cascade_rcnn_sampling_free"
