# Sampling-Free Faster R-CNN on the shapes dataset with SGD: the pair of
# faster_rcnn_R18h_FPN_sgd.py (see there why).
from .faster_rcnn_R18h_FPN_sampling_free import dataloader, lr_multiplier, model, train
from .faster_rcnn_R18h_FPN_sgd import optimizer

train.output_dir = "output/shapes_faster_rcnn_sampling_free_sgd"
