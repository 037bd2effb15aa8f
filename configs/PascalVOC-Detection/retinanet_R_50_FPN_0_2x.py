# RetinaNet-FL R-50-FPN on PASCAL VOC 07+12, "0.2x" (journal Table VI; official README row
# retinanet_voc_R_50_FPN_0.2x). That config is not in the official repository: this is its COCO
# baseline (retinanet_fl_R_50_FPN_1x.py) with 20 classes and 0.2 x the 1x schedule, i.e. 18k
# iterations at batch 16 with x0.1 at 12k and 16k (detectron2's VOC schedule too).
from detectron2.config import LazyConfig

from ..common.data.voc import dataloader, num_classes
from ..common.schedules import multistep

model, optimizer, train = LazyConfig.load_rel(
    "../COCO-Detection/retinanet_fl_R_50_FPN_1x.py", ("model", "optimizer", "train")
)
model.num_classes = num_classes
train.max_iter = 18000
lr_multiplier = multistep(train.max_iter, [12000, 16000], warmup_factor=1.0 / 3)
