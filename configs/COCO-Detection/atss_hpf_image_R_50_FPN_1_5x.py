# atss_hpf_image_R_50_FPN_1x.py (one gamma_ad per image: our reading of "per-sample") on the
# HPF paper's 1.5x schedule: HPF Table 5 "per-sample" (40.2 AP minival).
from .atss_hpf_R_50_FPN_1_5x import lr_multiplier, train
from .atss_hpf_image_R_50_FPN_1x import dataloader, model, optimizer
