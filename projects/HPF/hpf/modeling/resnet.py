"""
ResNet / ResNeXt stages (res2-res5) for detectron2's ``ResNet(stem, stages, out_features,
freeze_at)``, built as detectron2's ``build_resnet_backbone`` builds them from a yacs config, but
as a plain function a LazyConfig can call: ResNeXt widths and deformable convolutions per stage
(``ResNet.make_default_stages`` can do neither).
"""
from typing import Sequence

from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from torch import nn

from ..layers import DeformBottleneckBlock

__all__ = ["EvalModeBatchNorm2d", "resnet_stages", "NUM_BLOCKS_PER_STAGE"]

NUM_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class EvalModeBatchNorm2d(nn.BatchNorm2d):
    """
    BatchNorm that always normalises with its running statistics and never updates them, while
    its affine weight and bias stay trainable: mmdetection's
    ``norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True``, which the HPF/ATSS
    reference configs use for res3-res5. (detectron2's ``FrozenBN`` also freezes the affine
    parameters.) ``ResNet.freeze`` still turns it into ``FrozenBatchNorm2d`` in frozen stages.
    Selected with ``norm="EvalBN"`` in :func:`resnet_stages`.
    """

    def train(self, mode: bool = True):
        return super().train(False)


def _resolve_norm(norm):
    if norm == "EvalBN":
        return EvalModeBatchNorm2d
    return norm


def resnet_stages(
    depth: int,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = False,
    norm="FrozenBN",
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = True,
    deform_num_groups: int = 1,
    res5_dilation: int = 1,
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
):
    """
    The four stages res2-res5 of a ResNet/ResNeXt, the ``stages`` argument of detectron2's
    ``ResNet``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_groups, width_per_group: ResNeXt cardinality and width; the 3x3 conv of a stage-i
            (i = 0..3) bottleneck has ``num_groups * width_per_group * 2**i`` channels
            (R-50: 1 x 64; X-101-32x8d: 32 x 8; X-101-64x4d: 64 x 4).
        stride_in_1x1: True for MSRA/Caffe2 ResNets (stride in the first 1x1 conv), False for
            pytorch-style ones (torchvision, mmdetection ``style='pytorch'``, FAIR ResNeXt).
        norm: anything detectron2's ``get_norm`` takes ("FrozenBN", "BN", "SyncBN", "GN", a
            callable), or "EvalBN" for :class:`EvalModeBatchNorm2d`.
        deform_on_per_stage: for res2..res5, whether the 3x3 convs are deformable
            (mmdetection's ``stage_with_dcn``; "DCN in c3-c5" is (False, True, True, True)).
        deform_modulated: DCNv2 (True, mmdetection's ``type='DCNv2'``) or DCNv1.
        deform_num_groups: deformable groups of the offsets (mmdetection's ``deform_groups``).
        res5_dilation: 1, or 2 for a dilated res5 (stride 16).
        stem_out_channels, res2_out_channels: stem width and res2 output width.
    """
    if depth not in NUM_BLOCKS_PER_STAGE:
        raise ValueError(f"depth must be one of {sorted(NUM_BLOCKS_PER_STAGE)}, got {depth}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
    deform_on_per_stage = [bool(d) for d in deform_on_per_stage]
    if len(deform_on_per_stage) != 4:
        raise ValueError(f"deform_on_per_stage needs 4 entries, got {deform_on_per_stage}")
    if depth in (18, 34):
        if res2_out_channels != 64:
            raise ValueError("R18/R34 need res2_out_channels=64")
        if any(deform_on_per_stage):
            raise ValueError("deformable convolutions need bottleneck blocks (depth >= 50)")
        if res5_dilation != 1 or num_groups != 1:
            raise ValueError("R18/R34 support neither res5_dilation nor num_groups")

    norm = _resolve_norm(norm)
    num_blocks = NUM_BLOCKS_PER_STAGE[depth]
    in_channels = stem_out_channels
    out_channels = res2_out_channels
    bottleneck_channels = num_groups * width_per_group

    stages = []
    for idx in range(4):
        dilation = res5_dilation if idx == 3 else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        kwargs = dict(
            num_blocks=num_blocks[idx],
            stride_per_block=[first_stride] + [1] * (num_blocks[idx] - 1),
            in_channels=in_channels,
            out_channels=out_channels,
            norm=norm,
        )
        if depth in (18, 34):
            kwargs["block_class"] = BasicBlock
        else:
            kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
                num_groups=num_groups,
            )
            if deform_on_per_stage[idx]:
                kwargs.update(
                    block_class=DeformBottleneckBlock,
                    deform_modulated=deform_modulated,
                    deform_num_groups=deform_num_groups,
                )
            else:
                kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return stages
