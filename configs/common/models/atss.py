from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform

from hpf.losses import FocalLoss
from hpf.modeling import ATSS, ATSSHead, ATSSMatcher, LastLevelP6P7NoReLU

from ..data.constants import constants

# ATSS R-50-FPN as in the mmdetection implementation HPF builds on (zimoqingfeng/UMOP's ATSS
# head and assigner): pytorch-style ResNet (stride in the 3x3 conv,
# torchvision ImageNet weights, RGB input), stem + res2 frozen, FrozenBN; FPN P3-P7 with
# P6/P7 from P5 and no ReLU before P7; GN head with 4 convs per tower.
model = L(ATSS)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7NoReLU)(in_channels=256, out_channels=256, in_feature="p5"),
    ),
    head=L(ATSSHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        prior_prob=0.01,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    # One square anchor of octave_base_scale 8 x stride per location, centred on the stride
    # grid (mmdetection's offset 0).
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[1.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
    anchor_matcher=L(ATSSMatcher)(topk=9),
    num_classes=80,
    cls_loss=L(FocalLoss)(alpha=0.25, gamma=2.0),
    loss_balance=None,
    box_loss_weight=2.0,
    centerness_loss_weight=1.0,
    prior_prob=0.01,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    loss_normalizer="mean",
    pixel_mean=constants["imagenet_rgb256_mean"],
    pixel_std=constants["imagenet_rgb256_std"],
    input_format="RGB",
)
