# Faster R-CNN with biased sampling (RPN 256 anchors / image at 1:1, RoI heads 512 proposals /
# image at 1:3) on the embedded shapes dataset: the half-width ResNet-18 FPN from scratch, on
# CPU. The baseline of the Sampling-Free R-CNN pair (faster_rcnn_R18h_FPN_sampling_free.py).
from hpf.config import use_small_resnet_rcnn

from ..common.data.shapes import dataloader
from ..common.models.faster_rcnn import model
from ..common.optim import AdamW as optimizer
from ..common.schedules import cpu_schedule
from ..common.train_cpu import train

use_small_resnet_rcnn(model)
model.roi_heads.num_classes = 4
# 12-200 px objects in 256-320 px images: anchors of 16-256 px on P2-P6 (stock: 32-512).
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
# A tenth of COCO's image area and 1-8 objects: a quarter of the stock RoI budget (128 sampled
# of 256 post-NMS training proposals per image, not 512 of 1000) keeps the RoI ratio of
# baseline to Sampling-Free (about 1:2) and an affordable CPU step (with the stock budget,
# ROIAlign's backward took a third of a 2.6 s step: `python benchmarks/profile_step.py --config-file
# configs/Shapes/faster_rcnn_R18h_FPN.py model.roi_heads.batch_size_per_image=512
# "model.proposal_generator.post_nms_topk=[1000,1000]"`; 1.4 s with this budget).
model.roi_heads.batch_size_per_image = 128
model.proposal_generator.post_nms_topk = (256, 1000)

optimizer.lr = 2e-3

train.max_iter = 600
train.output_dir = "output/shapes_faster_rcnn"

lr_multiplier = cpu_schedule(train.max_iter)
