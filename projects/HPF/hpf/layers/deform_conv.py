"""
Deformable convolution (DCN v1 and the modulated DCN v2) on ``torchvision.ops.deform_conv2d``.

detectron2's own ``DeformConv`` / ``ModulatedDeformConv`` need its compiled ``detectron2._C``;
these modules have the same constructor arguments, parameter names and forward interface, but
run on torchvision's operator (CPU and CUDA), so detectron2 checkpoints map one to one.

Offset layout (the same in torchvision, detectron2 and mmcv): for deformable group ``g`` and
kernel position ``k = i * kw + j``, channel ``2 * (g * kh * kw + k)`` holds the vertical (y)
offset and the next channel the horizontal (x) offset; the mask has one channel per
``(g, k)``. A DCNv2 offset branch predicts ``3 * G * kh * kw`` channels: the first two thirds
are the offsets, the last third the mask logits (``sigmoid`` is applied), as in detectron2's
``DeformBottleneckBlock`` and mmcv's ``ModulatedDeformConv2dPack``.

At initialisation the offset branch is all zeros (weights and bias), so the offsets are 0: DCNv1
then equals a plain convolution; for DCNv2 the mask is ``sigmoid(0) = 0.5``, so it equals
**half** of the plain convolution (bias excluded), exactly as in mmcv and detectron2.
"""
from typing import Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock as _D2DeformBottleneckBlock
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "ModulatedDeformConvPack", "DeformBottleneckBlock"]


class DeformConv(nn.Module):
    """
    Deformable convolution (v1) with detectron2's ``DeformConv`` interface:
    ``forward(x, offset)``, parameters ``weight`` (and ``bias``), optional ``norm`` and
    ``activation`` applied after the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible "
                f"by groups {groups}"
            )
        if in_channels % deformable_groups:
            raise ValueError(
                f"in_channels {in_channels} must be divisible by deformable_groups "
                f"{deformable_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation

        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    @property
    def offset_channels(self) -> int:
        return 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]

    def _check(self, offset, mask):
        if offset.shape[1] != self.offset_channels:
            raise ValueError(
                f"offset has {offset.shape[1]} channels, expected {self.offset_channels} "
                f"(2 * deformable_groups * kh * kw)"
            )
        if mask is not None and mask.shape[1] != self.offset_channels // 2:
            raise ValueError(
                f"mask has {mask.shape[1]} channels, expected {self.offset_channels // 2} "
                f"(deformable_groups * kh * kw)"
            )

    def _deform(self, x, offset, mask):
        self._check(offset, mask)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # In float32 under autocast, as torchvision's CUDA autocast rule runs it: there is
            # no CPU rule and no bfloat16 CPU kernel, and bfloat16 sampling positions would
            # lose their fractional part on feature maps over 128 wide.
            with torch.autocast(device_type, enabled=False):
                return self._deform(x.float(), offset.float(),
                                    None if mask is None else mask.float())
        out = deform_conv2d(  # handles an empty batch itself
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def forward(self, x, offset):
        return self._deform(x, offset, None)

    def extra_repr(self):
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )


class ModulatedDeformConv(DeformConv):
    """
    Modulated deformable convolution (DCNv2) with detectron2's ``ModulatedDeformConv``
    interface: ``forward(x, offset, mask)`` where ``mask`` is already in [0, 1] (the caller
    applies the sigmoid). ``bias`` defaults to True as in detectron2.
    """

    def __init__(self, in_channels, out_channels, kernel_size, bias: bool = True, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, **kwargs)

    def forward(self, x, offset, mask):
        return self._deform(x, offset, mask)


class ModulatedDeformConvPack(ModulatedDeformConv):
    """
    Self-contained DCNv2 layer (mmcv's ``ModulatedDeformConv2dPack``; mmdet's ``type='DCNv2'``):
    a plain conv ``conv_offset`` with the same kernel/stride/padding/dilation predicts
    ``3 * deformable_groups * kh * kw`` channels (offsets, then mask logits) and is initialised
    to zero. ``forward(x)`` like an ``nn.Conv2d``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.conv_offset = nn.Conv2d(
            in_channels,
            3 * self.offset_channels // 2,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        offset_mask = self.conv_offset(x)
        n = self.offset_channels
        return self._deform(x, offset_mask[:, :n], offset_mask[:, n:].sigmoid())


class DeformBottleneckBlock(_D2DeformBottleneckBlock):
    """
    detectron2's ``DeformBottleneckBlock`` (same arguments, submodule names ``conv1``,
    ``conv2_offset``, ``conv2``, ``conv3``, ``shortcut`` and the same ``forward``, which is
    inherited), with ``conv2`` built on torchvision's operator instead of detectron2's compiled
    one. ``conv2_offset`` (a plain 3x3 conv predicting 27 or 18 channels per deformable group)
    starts at zero.

    ``__init__`` does not call detectron2's, which would construct detectron2's ``_C``-backed
    convolution; it builds the same modules itself.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        bottleneck_channels,
        stride=1,
        num_groups=1,
        norm="BN",
        stride_in_1x1=False,
        dilation=1,
        deform_modulated=False,
        deform_num_groups=1,
    ):
        CNNBlockBase.__init__(self, in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated

        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None

        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)

        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        conv_class = ModulatedDeformConv if deform_modulated else DeformConv
        per_group = 27 if deform_modulated else 18  # (2 offsets [+ 1 mask]) x 3 x 3
        self.conv2_offset = Conv2d(
            bottleneck_channels,
            per_group * deform_num_groups,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        self.conv2 = conv_class(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            deformable_groups=deform_num_groups,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )

        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)
