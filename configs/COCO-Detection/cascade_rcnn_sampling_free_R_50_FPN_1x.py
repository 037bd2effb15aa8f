# Cascade R-CNN R-50-FPN 1x, detection only, with Sampling-Free in the RPN and all three RoI
# stages, each guided by its own box loss (conference paper Table 7: 42.8 AP test-dev).
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn

from .cascade_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
use_sampling_free_roi_heads(model)
