# ATSS-HPF Swin-B (ImageNet-22k), 2x, multi-scale [480, 960]: HPF Table 9 "Swin-B-22K"
# (UMOP umop_swin-B_fpn_2x_coco_mstrain.py).
from hpf.config import set_backbone

from .atss_hpf_Swin_S_FPN_ms_2x import dataloader, lr_multiplier, model, optimizer, train

set_backbone(model, "swin_b", dataloader, train)
