# RetinaNet R-50-FPN with Sampling-Free on PASCAL VOC 07+12, 0.2x (journal Table VI): the COCO
# Sampling-Free config with the VOC data, classes and schedule of retinanet_R_50_FPN_0_2x.py.
# Its prior and threshold stay the COCO config's; "auto" derives both from the VOC data (C = 20).
from detectron2.config import LazyConfig

from ..common.data.voc import num_classes
from .retinanet_R_50_FPN_0_2x import dataloader, lr_multiplier, train

model, optimizer = LazyConfig.load_rel(
    "../COCO-Detection/retinanet_sampling_free_R_50_FPN_1x.py", ("model", "optimizer")
)
model.num_classes = num_classes
