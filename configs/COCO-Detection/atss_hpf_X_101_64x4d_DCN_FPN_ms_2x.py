# ATSS-HPF X-101-64x4d-DCN, multi-scale [640, 800], 24 epochs [16, 22] (Table 9's ATSS baseline
# schedule; the HPF row trains 18 epochs: atss_hpf_X_101_64x4d_DCN_FPN_ms_1_5x.py).
from ..common.schedules import lr_multiplier_2x as lr_multiplier
from .atss_hpf_X_101_64x4d_DCN_FPN_ms_1_5x import dataloader, model, optimizer, train

train.max_iter = lr_multiplier.scheduler.num_updates
