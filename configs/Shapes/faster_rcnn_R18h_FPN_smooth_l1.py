# The shapes Faster R-CNN baseline (biased sampling) with the box losses of the Sampling-Free
# configs (smooth L1, beta 1/9 in the RPN and 1 in the RoI heads): its pair,
# faster_rcnn_R18h_FPN_sampling_free.py, then differs in sampling alone.
from hpf.config import use_smooth_l1_box_losses

from .faster_rcnn_R18h_FPN import dataloader, lr_multiplier, model, optimizer, train

use_smooth_l1_box_losses(model)
train.output_dir = "output/shapes_faster_rcnn_smooth_l1"
