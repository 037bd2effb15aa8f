# Faster R-CNN R-50-FPN with biased sampling on PASCAL VOC 07+12, "0.2x" (journal Table VI;
# official README row faster_rcnn_voc_R_50_FPN_0.2x, a config not in the official repository):
# the COCO baseline with 20 classes and 0.2 x the 1x schedule (18k iterations, x0.1 at 12k, 16k).
from detectron2.config import LazyConfig

from ..common.data.voc import dataloader, num_classes
from ..common.schedules import multistep

model, optimizer, train = LazyConfig.load_rel(
    "../COCO-Detection/faster_rcnn_R_50_FPN_1x.py", ("model", "optimizer", "train")
)
model.roi_heads.num_classes = num_classes
train.max_iter = 18000
lr_multiplier = multistep(train.max_iter, [12000, 16000], warmup_factor=1.0 / 3)
