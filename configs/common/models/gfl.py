from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet

from hpf.losses import QualityFocalLoss
from hpf.modeling import ATSSMatcher, GFL, GFLHead, LastLevelP6P7NoReLU

from ..data.constants import constants

# GFL R-50-FPN as in the mmdetection implementation HPF builds on (zimoqingfeng/UMOP's GFL
# head, configs/gfl): the backbone, FPN and ATSS assignment of configs/common/models/atss.py;
# GN head with 4 convs per tower, a box branch of 4 x 17 distribution logits (reg_max 16) and
# no centerness; QFL (beta 2) on the IoU of the predicted box, GIoU x 2 and DFL x 0.25.
model = L(GFL)(
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
    head=L(GFLHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        prior_prob=0.01,
        reg_max=16,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    # One square anchor of octave_base_scale 8 x stride per location, centred on the stride
    # grid (mmdetection's offset 0): the ATSS assignment's boxes and the distances' origin.
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[1.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    anchor_matcher=L(ATSSMatcher)(topk=9),
    num_classes=80,
    cls_loss=L(QualityFocalLoss)(beta=2.0),
    loss_balance=None,
    box_loss_weight=2.0,
    dfl_loss_weight=0.25,
    dfl_target_margin=0.1,
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
