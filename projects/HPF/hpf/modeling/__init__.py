from .atss import ATSS, ATSSHead
from .backbone import basic_resnet_stages
from .dense_detector import PluggableLossMixin
from .fcos import FCOS
from .fpn import LastLevelP6P7NoReLU
from .matcher import ATSSMatcher
from .retinanet import RetinaNet

__all__ = [
    "ATSS",
    "ATSSHead",
    "ATSSMatcher",
    "FCOS",
    "LastLevelP6P7NoReLU",
    "PluggableLossMixin",
    "RetinaNet",
    "basic_resnet_stages",
]
