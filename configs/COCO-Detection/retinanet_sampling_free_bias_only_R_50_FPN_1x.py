# Sampling-Free ablation (conference Table 3, journal Table IV(a)): the Sampling-Free config
# without guided loss scaling (CE with its small prior and its threshold only). The papers
# report that it diverges.
from .retinanet_sampling_free_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.loss_balance = None
