"""
The backbones of the papers, as LazyCall fragments for ``model.backbone.bottom_up`` of an FPN
model (detectron2 model-zoo style), with the ImageNet weights and input normalisation each needs.
configs/common/models/backbones.py re-exports them for leaf configs.

One line in a leaf config switches everything (bottom-up network, FPN ``in_features``, a
P6-from-C5 top block, ``pixel_mean``/``pixel_std``/``input_format``, the mapper's
``image_format`` and ``train.init_checkpoint``)::

    from hpf.config import set_backbone
    set_backbone(model, "resnext101_64x4d_dcn_c3_c5", dataloader, train)

or by hand::

    from hpf.config.backbones import swin_s, init_checkpoints, pixel_stats
    model.backbone.bottom_up = swin_s
    model.backbone.in_features = ["p1", "p2", "p3"]        # ResNets: ["res3", "res4", "res5"]
    model.pixel_mean = pixel_stats["swin_s"]["pixel_mean"]  # and pixel_std, input_format,
    dataloader.train.mapper.image_format = "RGB"            # dataloader.test.mapper.image_format
    train.init_checkpoint = init_checkpoints["swin_s"]

Settings follow the HPF reference (zimoqingfeng/UMOP, mmdetection 2.x): ResNets pytorch-style
(stride in the 3x3 conv), stem + res2 frozen (``freeze_at=2`` = mmdet ``frozen_stages=1``), BN
statistics frozen but BN weight/bias trained in res3-res5 (mmdet ``norm_eval=True`` with
``requires_grad=True``: ``norm="EvalBN"``; detectron2's usual ``"FrozenBN"`` also freezes the
affine parameters: ``model.backbone.bottom_up.stages.norm = "FrozenBN"``); DCNv2 with one
deformable group in every 3x3 conv of res3-res5 (mmdet ``stage_with_dcn=(F, T, T, T)``);
Swin window 7, drop_path 0.3 for S, B and L (B/L configs inherit it from S), nothing frozen, C3-C5
to the FPN (UMOP computes C2 but its FPN starts at level 1).

Weights (``init_checkpoints``): detectron2 hosts torchvision's R-50 and FAIR's X-101-32x8d
(MODEL_ZOO.md, configs/COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml) and Swin-B/L 22k
(projects/ViTDet/configs/COCO/cascade_mask_rcnn_swin_{b,l}_in21k_50ep.py). The others are
local files a user makes once:

* ``checkpoints/R-101-torchvision.pkl``: torchvision IMAGENET1K_V1 (resnet101-63fe2227.pth, the
  weights of mmcv's ``torchvision://resnet101``):
  ``python tools/convert_torchvision_to_d2.py resnet101-63fe2227.pth checkpoints/R-101-torchvision.pkl``
* ``checkpoints/X-101-64x4d.pkl``: HPF used ``open-mmlab://resnext101_64x4d``
  (resnext101_64x4d-ee2c6f71.pth, torchvision names):
  ``python tools/convert_torchvision_to_d2.py resnext101_64x4d-ee2c6f71.pth checkpoints/X-101-64x4d.pkl``
  (torchvision's own resnext101_64x4d-173b62eb.pth converts the same way; other weights).
* ``checkpoints/swin_small_patch4_window7_224.pth``: the official Swin-S ImageNet-1k release, used
  as is (``?matching_heuristics=True`` maps ``layers.*`` to ``backbone.bottom_up.layers.*``).

Input normalisation (``pixel_stats``): torchvision, mmdet/open-mmlab and Swin weights take RGB
with mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]; FAIR's Caffe2 X-101-32x8d
takes BGR with mean [103.53, 116.28, 123.675], std [57.375, 57.12, 58.395] (MSRA R-50/R-101,
not listed here, take BGR with std 1).
"""
import copy

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.swin import SwinTransformer

from hpf.modeling.resnet import resnet_stages

# configs/common/data/constants.py's imagenet_rgb256_* / imagenet_bgr256_mean.
_RGB = dict(
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
_FAIR_BGR = dict(
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
)
_C3_C5 = [False, True, True, True]


def _resnet(depth, num_groups=1, width_per_group=64, dcn=False):
    return L(ResNet)(
        # The stem is frozen (freeze_at >= 1) in every reference config.
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(resnet_stages)(
            depth=depth,
            num_groups=num_groups,
            width_per_group=width_per_group,
            stride_in_1x1=False,
            norm="EvalBN",
            deform_on_per_stage=list(_C3_C5) if dcn else [False] * 4,
            deform_modulated=True,
            deform_num_groups=1,
        ),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )


def _swin(embed_dim, num_heads, drop_path_rate=0.3):
    return L(SwinTransformer)(
        embed_dim=embed_dim,
        depths=[2, 2, 18, 2],
        num_heads=num_heads,
        window_size=7,
        drop_path_rate=drop_path_rate,  # needs timm (detectron2 imports its DropPath)
        out_indices=[1, 2, 3],  # -> "p1", "p2", "p3" at strides 8, 16, 32
        frozen_stages=-1,
    )


resnet50_pytorch_style = _resnet(50)
resnet101_pytorch_style = _resnet(101)
resnet101_dcn_c3_c5 = _resnet(101, dcn=True)
resnext101_32x8d = _resnet(101, num_groups=32, width_per_group=8)
resnext101_64x4d = _resnet(101, num_groups=64, width_per_group=4)
resnext101_64x4d_dcn_c3_c5 = _resnet(101, num_groups=64, width_per_group=4, dcn=True)
swin_s = _swin(96, [3, 6, 12, 24])
swin_b = _swin(128, [4, 8, 16, 32])
swin_l = _swin(192, [6, 12, 24, 48])

backbones = dict(
    resnet50_pytorch_style=resnet50_pytorch_style,
    resnet101_pytorch_style=resnet101_pytorch_style,
    resnet101_dcn_c3_c5=resnet101_dcn_c3_c5,
    resnext101_32x8d=resnext101_32x8d,
    resnext101_64x4d=resnext101_64x4d,
    resnext101_64x4d_dcn_c3_c5=resnext101_64x4d_dcn_c3_c5,
    swin_s=swin_s,
    swin_b=swin_b,
    swin_l=swin_l,
)

_RESNET_FEATURES = ["res3", "res4", "res5"]
_SWIN_FEATURES = ["p1", "p2", "p3"]
# What the FPN reads (model.backbone.in_features) and the channels of those features.
fpn_in_features = {name: _SWIN_FEATURES if name.startswith("swin") else _RESNET_FEATURES
                   for name in backbones}
out_channels = {name: [512, 1024, 2048] for name in backbones if not name.startswith("swin")}
out_channels.update(swin_s=[192, 384, 768], swin_b=[256, 512, 1024], swin_l=[384, 768, 1536])

_X101_64X4D = "checkpoints/X-101-64x4d.pkl"
_R101_TV = "checkpoints/R-101-torchvision.pkl"
init_checkpoints = dict(
    resnet50_pytorch_style="detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    resnet101_pytorch_style=_R101_TV,
    resnet101_dcn_c3_c5=_R101_TV,
    resnext101_32x8d="detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl",
    resnext101_64x4d=_X101_64X4D,
    resnext101_64x4d_dcn_c3_c5=_X101_64X4D,
    swin_s="checkpoints/swin_small_patch4_window7_224.pth?matching_heuristics=True",
    swin_b="detectron2://ImageNetPretrained/swin/swin_base_patch4_window7_224_22k.pth"
    "?matching_heuristics=True",
    swin_l="detectron2://ImageNetPretrained/swin/swin_large_patch4_window7_224_22k.pth"
    "?matching_heuristics=True",
)

pixel_stats = {name: _FAIR_BGR if name == "resnext101_32x8d" else _RGB for name in backbones}


def set_backbone(model, name, dataloader=None, train=None):
    """
    Put backbone ``name`` into an FPN model config (``model.backbone`` is ``L(FPN)``): sets
    ``model.backbone.bottom_up`` and ``in_features``; a top block built on the bottom-up
    network's last stage (RetinaNet's P6 from C5) is re-pointed at the new one (one built on an
    FPN output, ``in_feature="p5"``, is left alone); ``model.pixel_mean``/``pixel_std``
    (and ``input_format`` where the model has one); with ``dataloader``, the train and test
    mappers' ``image_format``; with ``train``, ``train.init_checkpoint``. Returns ``model``.
    """
    if name not in backbones:
        raise KeyError(f"unknown backbone '{name}'; known: {', '.join(backbones)}")
    fpn = model.backbone
    if "in_features" not in fpn or "bottom_up" not in fpn:
        raise ValueError("set_backbone expects model.backbone to be an L(FPN)(bottom_up=..., ...)")
    old_features = list(fpn.in_features)
    fpn.bottom_up = copy.deepcopy(backbones[name])
    fpn.in_features = list(fpn_in_features[name])
    top = fpn.get("top_block", None)
    if top is not None and "in_channels" in top:
        top_in = top.get("in_feature", "res5")  # LastLevelP6P7's default
        if top_in in old_features or top_in.startswith("res"):
            top.in_feature = fpn_in_features[name][-1]
            top.in_channels = out_channels[name][-1]
    set_input(model, dataloader, **pixel_stats[name])
    if train is not None:
        train.init_checkpoint = init_checkpoints[name]
    return model


def set_input(model, dataloader, pixel_mean, pixel_std, input_format):
    """
    Sets the input the backbone weights expect: the model's pixel mean / std (and
    ``input_format`` where it has one) and, with ``dataloader``, its train / test mappers'
    ``image_format``.

    Args:
        model: a model config with ``pixel_mean`` / ``pixel_std``.
        dataloader: the config's ``dataloader`` or None.
        pixel_mean, pixel_std (list[float]): per channel, in ``input_format`` order.
        input_format (str): "RGB" or "BGR".
    """
    model.pixel_mean = list(pixel_mean)
    model.pixel_std = list(pixel_std)
    if "input_format" in model:
        model.input_format = input_format
    if dataloader is not None:
        for split in ("train", "test"):
            if split in dataloader and "mapper" in dataloader[split]:
                dataloader[split].mapper.image_format = input_format
