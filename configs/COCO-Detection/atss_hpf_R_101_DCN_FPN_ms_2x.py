# ATSS-HPF R-101-DCN, multi-scale [640, 800], 24 epochs [16, 22]: the schedule of Table 9's ATSS
# baselines (the HPF rows themselves train 18 epochs: atss_hpf_R_101_DCN_FPN_ms_1_5x.py).
from ..common.schedules import lr_multiplier_2x as lr_multiplier
from .atss_hpf_R_101_DCN_FPN_ms_1_5x import dataloader, model, optimizer, train

train.max_iter = lr_multiplier.scheduler.num_updates
