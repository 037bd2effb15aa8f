# ATSS R-50 focal loss on the HPF paper's schedule: the fair baseline of atss_hpf_R_50_FPN_1_5x
# (HPF Table 3: "our training settings for training the original ATSS").
from ..common.schedules import multistep
from .atss_R_50_FPN_1x import dataloader, model, optimizer, train

# HPF Sec. 5: lr 0.01, x0.1 at 90k and 120k of 135k iterations (batch 16), 500-iteration linear
# warm-up. (UMOP's 18 epochs [12, 16] are ~132k / 88k / 117.3k:
# common.schedules.lr_multiplier_1_5x.)
train.max_iter = 135000
lr_multiplier = multistep(train.max_iter, [90000, 120000])
