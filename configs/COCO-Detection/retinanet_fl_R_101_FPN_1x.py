# RetinaNet-FL R-101-FPN 1x: the R-50 config with ResNet-101 (MSRA weights).
from .retinanet_fl_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
