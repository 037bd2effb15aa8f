"""The small from-scratch ResNets of the CPU-sized configs (embedded shapes dataset), put
into a dense detector or an R-CNN model config by mutating it."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from hpf.modeling import basic_resnet_stages


def use_small_resnet_fpn(model, widths=(32, 64, 128, 256), fpn_channels=64, head_convs=2,
                         norm="BN"):
    """
    Puts a from-scratch ResNet-18-shaped backbone (BasicBlocks, 2 per stage, the given
    widths; half of ResNet-18's by default, about 3x cheaper on a CPU) under the FPN of a
    dense detector config, with ``fpn_channels`` FPN / head channels and ``head_convs`` convs
    per head tower. For the CPU-sized configs of the embedded shapes dataset.
    """
    model.backbone.bottom_up = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=widths[0], norm=norm),
        stages=L(basic_resnet_stages)(widths=widths, in_channels=widths[0], norm=norm),
        out_features=["res3", "res4", "res5"],
        freeze_at=0,  # trained from scratch: nothing to freeze
    )
    model.backbone.in_features = ["res3", "res4", "res5"]
    model.backbone.out_channels = fpn_channels
    model.backbone.top_block.in_channels = fpn_channels
    model.backbone.top_block.out_channels = fpn_channels
    model.backbone.top_block.in_feature = "p5"
    model.head.input_shape = [ShapeSpec(channels=fpn_channels)] * 5
    model.head.conv_dims = [fpn_channels] * head_convs
    # BGR images; from scratch, so normalised by the ImageNet std as well.
    model.pixel_mean = [103.530, 116.280, 123.675]
    model.pixel_std = [57.375, 57.120, 58.395]
    if "input_format" in model:
        model.input_format = "BGR"


def use_small_resnet_rcnn(model, widths=(32, 64, 128, 256), fpn_channels=64, fc_dim=256,
                          norm="BN"):
    """
    The same from-scratch backbone under an R-CNN config (FPN on res2-res5, P2-P6): RPN head
    and RoI box heads narrowed to ``fpn_channels`` inputs and ``fc_dim``-wide FCs.
    """
    model.backbone.bottom_up = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=widths[0], norm=norm),
        stages=L(basic_resnet_stages)(widths=widths, in_channels=widths[0], norm=norm),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=0,
    )
    model.backbone.in_features = ["res2", "res3", "res4", "res5"]
    model.backbone.out_channels = fpn_channels
    model.proposal_generator.head.in_channels = fpn_channels
    roi_heads = model.roi_heads
    box_heads = roi_heads.box_heads if "box_heads" in roi_heads else [roi_heads.box_head]
    for head in box_heads:
        head.input_shape = ShapeSpec(channels=fpn_channels, height=7, width=7)
        head.fc_dims = [fc_dim, fc_dim]
    predictors = roi_heads.box_predictors if "box_predictors" in roi_heads else [roi_heads.box_predictor]
    for predictor in predictors:
        predictor.input_shape = ShapeSpec(channels=fc_dim)
    if roi_heads.get("mask_head") is not None:
        roi_heads.mask_head.input_shape = ShapeSpec(channels=fpn_channels, width=14, height=14)
        roi_heads.mask_head.conv_dims = [fpn_channels] * 3
    model.pixel_mean = [103.530, 116.280, 123.675]
    model.pixel_std = [57.375, 57.120, 58.395]
    model.input_format = "BGR"
