"""
LazyConfig helpers: functions that edit a model config in a leaf config (one call each) and
``apply_overrides``, train_net.py's command-line overrides that refuse unknown keys. The LazyCall
model definitions they edit live in configs/common.

    from hpf.config import set_backbone, use_sampling_free_rpn, use_small_resnet_fpn
"""
from .backbones import set_backbone
from .box_losses import use_smooth_l1_box_losses
from .imagenet_r50 import use_imagenet_r50
from .overrides import apply_overrides, has_key
from .sampling_free import use_sampling_free_roi_heads, use_sampling_free_rpn
from .small_resnet import use_small_resnet_fpn, use_small_resnet_rcnn

__all__ = [
    "apply_overrides",
    "has_key",
    "use_imagenet_r50",
    "set_backbone",
    "use_sampling_free_roi_heads",
    "use_sampling_free_rpn",
    "use_small_resnet_fpn",
    "use_small_resnet_rcnn",
    "use_smooth_l1_box_losses",
]
