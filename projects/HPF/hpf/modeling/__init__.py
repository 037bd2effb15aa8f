from .atss import ATSS, ATSSHead
from .backbone import basic_resnet_stages
from .dense_detector import PluggableLossMixin
from .fast_rcnn import SamplingFreeFastRCNNOutputLayers
from .fcos import FCOS
from .fpn import LastLevelP6P7NoReLU
from .gfl import GFL, GFLHead
from .ghm_fast_rcnn import GHMRFastRCNNOutputLayers
from .matcher import ATSSMatcher
from .poolers import Float32BoxesROIAlign, ROIPooler
from .retinanet import RetinaNet
from .roi_heads import SamplingFreeCascadeROIHeads, SamplingFreeROIHeads
from .rpn import SamplingFreeRPN
from .task_aligned_assigner import TaskAlignedMatcher
from .test_time_augmentation import DenseDetectorWithTTA
from .tood import TOOD, TOODHead
from .vfnet import VFNet, VFNetHead

__all__ = [
    "ATSS",
    "ATSSHead",
    "ATSSMatcher",
    "DenseDetectorWithTTA",
    "FCOS",
    "Float32BoxesROIAlign",
    "GFL",
    "GFLHead",
    "GHMRFastRCNNOutputLayers",
    "LastLevelP6P7NoReLU",
    "PluggableLossMixin",
    "ROIPooler",
    "RetinaNet",
    "SamplingFreeCascadeROIHeads",
    "SamplingFreeFastRCNNOutputLayers",
    "SamplingFreeROIHeads",
    "SamplingFreeRPN",
    "TOOD",
    "TOODHead",
    "TaskAlignedMatcher",
    "VFNet",
    "VFNetHead",
    "basic_resnet_stages",
]
