# The shapes Faster R-CNN baseline with the papers' optimizer, SGD (momentum 0.9, weight decay
# 1e-4), instead of AdamW. Guided loss scaling sets the size of the classification loss; AdamW
# divides every parameter's step by its own gradient's running size, so for the layers only the
# classifier uses the scale cancels. This pair (with faster_rcnn_R18h_FPN_sampling_free_sgd.py)
# compares Sampling-Free with the baseline where the scale does act, as in the papers.
from ..common.optim import SGD as optimizer
from .faster_rcnn_R18h_FPN import dataloader, lr_multiplier, model, train

optimizer.lr = 0.01  # the papers' 0.02 at batch 16, halved for batch 8
train.output_dir = "output/shapes_faster_rcnn_sgd"
