"""Small ResNets for CPU-sized experiments, built from detectron2's ResNet blocks."""
from typing import Sequence

from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock

__all__ = ["basic_resnet_stages"]


def basic_resnet_stages(
    widths: Sequence[int] = (64, 128, 256, 512),
    num_blocks: Sequence[int] = (2, 2, 2, 2),
    in_channels: int = 64,
    norm: str = "BN",
):
    """
    Stages res2-res5 of a ResNet made of BasicBlocks with the given widths: (64, 128, 256, 512)
    with (2, 2, 2, 2) blocks is ResNet-18 (what ``ResNet.make_default_stages(18)`` builds),
    halving the widths makes it about 3x cheaper. Returns what ``ResNet(stages=...)`` takes;
    ``in_channels`` is the stem's output width.
    """
    if len(widths) != len(num_blocks):
        raise ValueError(f"widths {tuple(widths)} and num_blocks {tuple(num_blocks)} differ in length")
    stages = []
    for i, (width, n) in enumerate(zip(widths, num_blocks)):
        first_stride = 1 if i == 0 else 2  # res2 follows the stem's max-pool
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=n,
                in_channels=in_channels,
                out_channels=width,
                stride_per_block=[first_stride] + [1] * (n - 1),
                norm=norm,
            )
        )
        in_channels = width
    return stages
