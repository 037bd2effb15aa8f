# Sampling-Free ablation (conference Table 3, journal Table IV(a)): the Sampling-Free config
# with focal loss's prior 0.01 instead of the optimal bias (CE with guided loss scaling). The
# papers report that it diverges.
from .retinanet_sampling_free_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.prior_prob = 0.01
