# retinanet_R_50_FPN_focal without the ImageNet weights, at the same number of iterations: the
# whole backbone trains (random features cannot stay frozen), with GroupNorm instead of
# FrozenBN (BatchNorm statistics of 2 tiles are too noisy). Shows what the weights are worth.
from .retinanet_R_50_FPN_focal import dataloader, lr_multiplier, model, optimizer, train

train.init_checkpoint = ""
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.norm = "GN"
train.output_dir = "output/neon_trees_retinanet_focal_scratch"
