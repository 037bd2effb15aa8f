# Mask R-CNN R-50-FPN 1x with biased sampling: the baseline of Sampling-Free (conference paper
# Table 7 / Fig. 5: 37.8 box AP, 34.2 mask AP minival); the Faster R-CNN solver and box losses.
from hpf.config import use_smooth_l1_box_losses

from ..common.models.mask_rcnn import model
from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, optimizer, train

use_smooth_l1_box_losses(model)
dataloader.train.mapper.use_instance_mask = True
