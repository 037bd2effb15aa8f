from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from hpf.losses import VarifocalLoss
from hpf.modeling import VFNet, VFNetHead

from .atss import model

# VarifocalNet R-50-FPN as in the mmdetection implementation HPF builds on (zimoqingfeng/UMOP's
# VFNetHead, configs/vfnet/vfnet_r50_fpn_1x_coco.py): the backbone, anchors and ATSS assignment
# of ATSS (.atss; use_atss=True, center_offset 0: the anchors' centres are the boxes' points),
# but a ReLU before P7 (relu_before_extra_convs); GN head with 3 convs per tower, star-shaped
# deformable refinement; VFL, GIoU x 1.5 on the initial and x 2 on the refined boxes.
model._target_ = VFNet
model.backbone.top_block = L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5")
model.head = L(VFNetHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,
    num_classes="${..num_classes}",
    conv_dims=[256, 256, 256],
    strides=[8, 16, 32, 64, 128],
    # The reference's reg_denom: the upper ends of FCOS's regression ranges (the last
    # doubled), what exp() of the initial box conv is multiplied by.
    box_normalizers=[64, 128, 256, 512, 1024],
    norm="GN",
    prior_prob=0.01,
    gradient_mul=0.1,
)
del model.box2box_transform, model.box_loss_weight, model.centerness_loss_weight
model.cls_loss = L(VarifocalLoss)(alpha=0.75, gamma=2.0)
model.init_box_loss_weight = 1.5
model.refined_box_loss_weight = 2.0
