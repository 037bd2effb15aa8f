"""Layers that detectron2 builds from its compiled ``detectron2._C``, on torchvision operators."""
from .deform_conv import DeformBottleneckBlock, DeformConv, ModulatedDeformConv, ModulatedDeformConvPack

__all__ = ["DeformBottleneckBlock", "DeformConv", "ModulatedDeformConv", "ModulatedDeformConvPack"]
