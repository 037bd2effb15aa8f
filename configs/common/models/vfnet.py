from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from hpf.losses import VarifocalLoss
from hpf.modeling import ATSSMatcher, VFNet, VFNetHead

from ..data.constants import constants

# VarifocalNet R-50-FPN as in the mmdetection implementation HPF builds on (zimoqingfeng/UMOP's
# VFNetHead, configs/vfnet/vfnet_r50_fpn_1x_coco.py): pytorch-style ResNet, stem + res2 frozen;
# FPN P3-P7 with P6 from P5 and a ReLU before P7 (relu_before_extra_convs); GN head with 3 convs
# per tower, star-shaped deformable refinement, ATSS assignment.
model = L(VFNet)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5"),
    ),
    head=L(VFNetHead)(
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
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    # ATSS (use_atss=True): one square anchor of octave_base_scale 8 x stride per location,
    # centred on the stride grid (center_offset 0); its centres are the boxes' points.
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[1.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    anchor_matcher=L(ATSSMatcher)(topk=9),
    num_classes=80,
    cls_loss=L(VarifocalLoss)(alpha=0.75, gamma=2.0),
    loss_balance=None,
    init_box_loss_weight=1.5,
    refined_box_loss_weight=2.0,
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
