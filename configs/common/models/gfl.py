from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from hpf.losses import QualityFocalLoss
from hpf.modeling import GFL, GFLHead

from .atss import model

# GFL R-50-FPN as in the mmdetection implementation HPF builds on (zimoqingfeng/UMOP's GFL
# head, configs/gfl): the backbone, FPN, anchors and ATSS assignment of ATSS (.atss); GN head
# with 4 convs per tower, a box branch of 4 x 17 distribution logits (reg_max 16) and no
# centerness; QFL (beta 2) on the IoU of the predicted box, GIoU x 2 and DFL x 0.25. The
# anchors' centres are the origin of the predicted distances.
model._target_ = GFL
model.head = L(GFLHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,
    num_classes="${..num_classes}",
    conv_dims=[256, 256, 256, 256],
    norm="GN",
    prior_prob=0.01,
    reg_max=16,
)
del model.box2box_transform, model.centerness_loss_weight
model.cls_loss = L(QualityFocalLoss)(beta=2.0)
model.dfl_loss_weight = 0.25
model.dfl_target_margin = 0.1
