# Faster R-CNN R-50-FPN 1x, Sampling-Free's guided scaling added to the RoI heads' mini-batch
# biased sampling (kept); the RPN samples as the baseline (conference paper Table 4, hybrid
# "RoI sampling + Sampling-Free": 36.8 AP).
from hpf.config import use_sampling_free_roi_heads

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_roi_heads(model, keep_sampling=True)
