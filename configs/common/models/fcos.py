from detectron2.modeling.meta_arch.fcos import FCOSHead

from hpf.modeling import FCOS

from .retinanet import model

# detectron2's FCOS (hpf.modeling.FCOS: + per-level regression ranges, pluggable losses).
model._target_ = FCOS

del model.anchor_generator
del model.box2box_transform
del model.anchor_matcher
del model.input_format
del model.box_loss
del model.smooth_l1_beta
del model.box_loss_weight

# P6/P7 from P5 (Sec 2.2 of the FCOS journal version, arXiv:2006.09214).
model.backbone.top_block.in_feature = "p5"
model.backbone.top_block.in_channels = 256

# Threshold on sqrt(cls_score * centerness).
model.test_score_thresh = 0.2
model.test_nms_thresh = 0.6

model.head._target_ = FCOSHead
del model.head.num_anchors
model.head.norm = "GN"
