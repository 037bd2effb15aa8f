# atss_hpf_Swin_L_FPN_ms_2x.py tested at four scales, each also flipped: HPF Table 9
# "ATSS w/HPF* Swin-L-22K" (55.1 AP test-dev; UMOP umop_swin-L_fpn_2x_coco_mstrain_mstest.py:
# 54.7 val / 55.1 test-dev). Training is the single-scale-test config's.
from detectron2.config import LazyCall as L

from hpf.modeling import DenseDetectorWithTTA

from .atss_hpf_Swin_L_FPN_ms_2x import dataloader, lr_multiplier, model, optimizer, train

# Evaluation wraps the trained model (train_net.py do_test). mmdetection's test img_scale
# (1200, 800), (1300, 900), (1500, 1000), (1600, 1200) are (shortest edge, longest edge at most)
# (800, 1200) ... (1200, 1600). The candidates of the 8 passes are merged by class-wise NMS at
# the model's 0.6, keeping 100.
test_time_augmentation = L(DenseDetectorWithTTA)(
    sizes=[(800, 1200), (900, 1300), (1000, 1500), (1200, 1600)],
    flip=True,
)
# The wrapper resizes the original image to each scale itself.
dataloader.test.mapper.augmentations = []
