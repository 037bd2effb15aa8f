# Faster R-CNN R-50-FPN 1x, Sampling-Free in the RoI heads only (conference paper Table 4: 38.1 AP).
from hpf.config import use_sampling_free_roi_heads

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_roi_heads(model)
