# HPF with one (gamma_ad, alpha_ad) from the positives of all levels: progressive focus alone
# (HPF Table 4 "P.F." only, Table 5 "all-level").
from .atss_hpf_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss.sampling = "all"
