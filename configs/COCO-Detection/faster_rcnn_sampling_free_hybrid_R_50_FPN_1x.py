# Faster R-CNN R-50-FPN 1x, Sampling-Free added to the mini-batch biased sampling of both the RPN
# and the RoI heads (sampling kept; conference paper Table 4, hybrid in both: 36.4 AP).
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model, keep_sampling=True)
use_sampling_free_roi_heads(model, keep_sampling=True)
