# Faster R-CNN R-50-FPN 1x with Sampling-Free in the RPN and the RoI heads (conference paper
# Table 4 / 7: 38.4 AP minival). Test threshold 1e-3 as the official config; the adaptive one:
#   model.roi_heads.box_predictor.test_score_thresh="auto"
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
use_sampling_free_roi_heads(model)
