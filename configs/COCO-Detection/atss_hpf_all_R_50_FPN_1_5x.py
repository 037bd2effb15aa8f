# atss_hpf_all_R_50_FPN_1x.py (one gamma_ad from the positives of all levels: progressive focus
# alone) on the HPF paper's 1.5x schedule: HPF Table 4 "P.F." only / Table 5 "all-level"
# (40.1 AP minival).
from .atss_hpf_R_50_FPN_1_5x import lr_multiplier, train
from .atss_hpf_all_R_50_FPN_1x import dataloader, model, optimizer
