# Faster R-CNN R-50-FPN with Sampling-Free (RPN and RoI heads) on PASCAL VOC 07+12, 0.2x
# (journal Table VI): the COCO Sampling-Free config with the VOC data, classes and schedule of
# faster_rcnn_R_50_FPN_0_2x.py.
from detectron2.config import LazyConfig

from ..common.data.voc import num_classes
from .faster_rcnn_R_50_FPN_0_2x import dataloader, lr_multiplier, train

model, optimizer = LazyConfig.load_rel(
    "../COCO-Detection/faster_rcnn_sampling_free_R_50_FPN_1x.py", ("model", "optimizer")
)
model.roi_heads.num_classes = num_classes
