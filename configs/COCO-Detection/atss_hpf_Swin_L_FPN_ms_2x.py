# ATSS-HPF Swin-L (ImageNet-22k), 2x, multi-scale [480, 960]: HPF Table 9 "Swin-L-22K" single
# scale test (UMOP umop_swin-L_fpn_2x_coco_mstrain.py). The 55.1 AP row adds multi-scale + flip
# testing (umop_swin-L_..._mstest.py), which no config here does.
from hpf.config import set_backbone

from .atss_hpf_Swin_S_FPN_ms_2x import dataloader, lr_multiplier, model, optimizer, train

set_backbone(model, "swin_l", dataloader, train)
