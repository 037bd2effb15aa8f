"""
The backbones of the papers as LazyCall fragments for ``model.backbone.bottom_up`` of an FPN
model, with their FPN input features, output channels, ImageNet weights and input
normalisation: defined in hpf.config.backbones, next to ``set_backbone`` (see its docstring),
and re-exported here for leaf configs that set them by hand::

    from ..common.models.backbones import swin_s, init_checkpoints, pixel_stats
    model.backbone.bottom_up = swin_s

(assigning a fragment into a config copies it). Most configs need one line instead::

    from hpf.config import set_backbone
    set_backbone(model, "resnext101_64x4d_dcn_c3_c5", dataloader, train)
"""
import copy

from hpf.config import backbones as _catalogue

# Copies: a config that edits a fragment in place edits its own, as with LazyConfig's imports.
backbones = copy.deepcopy(_catalogue.backbones)
fpn_in_features = copy.deepcopy(_catalogue.fpn_in_features)
out_channels = copy.deepcopy(_catalogue.out_channels)
init_checkpoints = dict(_catalogue.init_checkpoints)
pixel_stats = copy.deepcopy(_catalogue.pixel_stats)

resnet50_pytorch_style = backbones["resnet50_pytorch_style"]
resnet101_pytorch_style = backbones["resnet101_pytorch_style"]
resnet101_dcn_c3_c5 = backbones["resnet101_dcn_c3_c5"]
resnext101_32x8d = backbones["resnext101_32x8d"]
resnext101_64x4d = backbones["resnext101_64x4d"]
resnext101_64x4d_dcn_c3_c5 = backbones["resnext101_64x4d_dcn_c3_c5"]
swin_s = backbones["swin_s"]
swin_b = backbones["swin_b"]
swin_l = backbones["swin_l"]
