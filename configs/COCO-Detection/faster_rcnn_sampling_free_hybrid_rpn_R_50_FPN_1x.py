# Faster R-CNN R-50-FPN 1x, Sampling-Free's guided scaling and optimal bias added to the RPN's
# mini-batch biased sampling (kept); the RoI heads sample as the baseline (conference paper
# Table 4, hybrid "RPN sampling + Sampling-Free": 36.5 AP).
from hpf.config import use_sampling_free_rpn

from .faster_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_sampling_free_rpn(model, keep_sampling=True)
