# Sampling-Free classification with the GHM-R box loss (conference Table 6), trained as the
# GHM rows of that table (the official GHM mmdetection config: torchvision R-50, unit target
# stds, gradient clipping, ...): retinanet_ghm with the classification ingredients of
# retinanet_sampling_free (its CE, guided scaling, prior and threshold). The guided ratio
# follows the weighted GHM-R loss (loss_weight 10), the box loss of this model.
from .retinanet_ghm_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train
from .retinanet_sampling_free_R_50_FPN_1x import model as _sampling_free

for key in ("cls_loss", "loss_balance", "prior_prob", "test_score_thresh"):
    model[key] = _sampling_free[key]
