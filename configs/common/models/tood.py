from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet

from hpf.losses import FocalLoss, QualityFocalLoss
from hpf.modeling import ATSSMatcher, LastLevelP6P7NoReLU, TaskAlignedMatcher, TOOD, TOODHead

from ..data.constants import constants

# TOOD R-50-FPN as mmdetection's tood_r50_fpn_1x_coco: the backbone and FPN of the ATSS
# config (pytorch-style ResNet, torchvision weights, RGB, P3-P7 with P6 from P5 and no ReLU
# before P7); T-head with 6 stacked GN convs, "anchor_free" boxes (distances from the
# location); one 8 x stride anchor per location for the ATSS phase.
model = L(TOOD)(
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
    head=L(TOODHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256] * 6,
        norm="GN",
        prior_prob=0.01,
        prior_offset=0.0,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[1.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    anchor_matcher=L(ATSSMatcher)(topk=9),
    alignment_matcher=L(TaskAlignedMatcher)(topk=13, alpha=1.0, beta=6.0),
    num_classes=80,
    # The reference's initial_epoch 4 in iterations: 4 epochs of COCO train2017's 117,266
    # images with annotations at batch 16, 4 x ceil(117266 / 16) = 4 x 7330.
    initial_iters=29320,
    cls_loss=L(QualityFocalLoss)(beta=2.0),
    initial_cls_loss=L(FocalLoss)(alpha=0.25, gamma=2.0),
    loss_balance=None,
    box_loss_weight=2.0,
    prior_prob=0.01,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    pixel_mean=constants["imagenet_rgb256_mean"],
    pixel_std=constants["imagenet_rgb256_std"],
    input_format="RGB",
)
