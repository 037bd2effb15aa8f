from .atss import ATSS, ATSSHead
from .backbone import basic_resnet_stages
from .dense_detector import PluggableLossMixin
from .fast_rcnn import SamplingFreeFastRCNNOutputLayers
from .fcos import FCOS
from .fpn import LastLevelP6P7NoReLU
from .ghm_fast_rcnn import GHMRFastRCNNOutputLayers
from .matcher import ATSSMatcher
from .poolers import Float32BoxesROIAlign, ROIPooler
from .retinanet import RetinaNet
from .roi_heads import SamplingFreeCascadeROIHeads, SamplingFreeROIHeads
from .rpn import SamplingFreeRPN
from .test_time_augmentation import DenseDetectorWithTTA

__all__ = [
    "ATSS",
    "ATSSHead",
    "ATSSMatcher",
    "DenseDetectorWithTTA",
    "FCOS",
    "Float32BoxesROIAlign",
    "GHMRFastRCNNOutputLayers",
    "LastLevelP6P7NoReLU",
    "PluggableLossMixin",
    "ROIPooler",
    "RetinaNet",
    "SamplingFreeCascadeROIHeads",
    "SamplingFreeFastRCNNOutputLayers",
    "SamplingFreeROIHeads",
    "SamplingFreeRPN",
    "basic_resnet_stages",
]
