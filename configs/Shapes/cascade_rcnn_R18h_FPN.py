# Cascade R-CNN (3 stages, detection only) with biased sampling on the shapes dataset: the
# Faster R-CNN baseline's backbone, anchors and schedule.
from hpf.config import use_small_resnet_rcnn

from ..common.models.cascade_rcnn import model
from .faster_rcnn_R18h_FPN import dataloader, lr_multiplier, optimizer, train

use_small_resnet_rcnn(model)
model.roi_heads.num_classes = 4
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.roi_heads.batch_size_per_image = 128  # the Faster R-CNN pair's RoI budget (see there)
model.proposal_generator.post_nms_topk = (256, 1000)
train.output_dir = "output/shapes_cascade_rcnn"
