# ATSS-HPF X-101-64x4d-DCN (c3-c5), 18 epochs, multi-scale training [640, 800]: HPF Table 9 row
# "ATSS w/HPF X-101-DCN 800 18 MS". UMOP has no config for it.
from hpf.config import set_backbone

from .atss_hpf_R_101_DCN_FPN_ms_1_5x import dataloader, lr_multiplier, model, optimizer, train

set_backbone(model, "resnext101_64x4d_dcn_c3_c5", dataloader, train)
