from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from hpf.losses import FocalLoss, QualityFocalLoss
from hpf.modeling import TaskAlignedMatcher, TOOD, TOODHead

from .atss import model

# TOOD R-50-FPN as mmdetection's tood_r50_fpn_1x_coco: the backbone, FPN, anchors and ATSS
# assignment of ATSS (.atss) for the initial phase; T-head with 6 stacked GN convs,
# "anchor_free" boxes (distances from the location); then Task Alignment Learning with QFL.
model._target_ = TOOD
model.head = L(TOODHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,
    num_classes="${..num_classes}",
    conv_dims=[256] * 6,
    norm="GN",
    prior_prob=0.01,
    prior_offset=0.0,
)
del model.box2box_transform, model.centerness_loss_weight, model.loss_normalizer
model.alignment_matcher = L(TaskAlignedMatcher)(topk=13, alpha=1.0, beta=6.0)
# The reference's initial_epoch 4 in iterations: 4 epochs of COCO train2017's 117,266 images
# with annotations at batch 16, 4 x ceil(117266 / 16) = 4 x 7330.
model.initial_iters = 29320
model.cls_loss = L(QualityFocalLoss)(beta=2.0)
model.initial_cls_loss = L(FocalLoss)(alpha=0.25, gamma=2.0)
