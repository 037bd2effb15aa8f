# ATSS-HPF R-101 1.5x, single scale 800 (UMOP umop_r101_fpn_1.5x_coco.py).
from hpf.config import set_backbone

from .atss_hpf_R_50_FPN_1_5x import dataloader, lr_multiplier, model, optimizer, train

set_backbone(model, "resnet101_pytorch_style", dataloader, train)
