# Faster R-CNN R-50-FPN 1x, Sampling-Free in the RPN only (conference paper Table 4: 37.5 AP).
from hpf.config import use_sampling_free_rpn

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model)
