# ATSS-HPF R-101 with DCNv2 in c3-c5, 1.5x, single scale 800
# (UMOP umop_r101_fpn_mdconv_c3-c5_1.5x_coco.py).
from hpf.config import set_backbone

from .atss_hpf_R_50_FPN_1_5x import dataloader, lr_multiplier, model, optimizer, train

set_backbone(model, "resnet101_dcn_c3_c5", dataloader, train)
