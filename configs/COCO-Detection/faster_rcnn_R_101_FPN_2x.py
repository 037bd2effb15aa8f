# Faster R-CNN R-101-FPN 2x, biased sampling (journal Table V): the 1x config on Detectron's 2x
# schedule (batch 16, 180k iterations, x0.1 at 120k and 160k). The journal gives no 2x
# settings: inferred.
from ..common.schedules import multistep
from .faster_rcnn_R_101_FPN_1x import dataloader, model, optimizer, train

train.max_iter = 180000
lr_multiplier = multistep(train.max_iter, [120000, 160000], warmup_factor=1.0 / 3)
