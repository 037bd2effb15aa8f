# Mask R-CNN R-50-FPN 1x with Sampling-Free in the RPN and the box branch; the mask branch is
# unchanged (conference paper Table 7: 39.0 box AP, 34.9 mask AP minival).
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn

from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
use_sampling_free_roi_heads(model)
