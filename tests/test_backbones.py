"""
Backbones: the torchvision-based deformable convolution, ResNet/ResNeXt stages against
torchvision's models (parameter counts, converted ImageNet weights give the same features), the
config fragments of hpf.config.backbones (re-exported by configs/common/models/backbones.py) and
``set_backbone`` in a leaf config.
Everything is built without pretrained weights; forwards run on 1x3x64x64 inputs.
"""
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import nn

from conftest import REPO, load_tool
from hpf.layers import (
    DeformBottleneckBlock,
    DeformConv,
    ModulatedDeformConv,
    ModulatedDeformConvPack,
)
from hpf.modeling.resnet import NUM_BLOCKS_PER_STAGE, EvalModeBatchNorm2d, resnet_stages

BACKBONES_CONFIG = os.path.join(REPO, "configs", "common", "models", "backbones.py")

converter = load_tool("tools/convert_torchvision_to_d2.py")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine's 2 cores are shared: these tests run single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# (a) deformable convolution
# ---------------------------------------------------------------------------------------------


def test_deform_conv_with_zero_offsets_is_a_plain_conv():
    torch.manual_seed(0)
    conv = DeformConv(8, 6, 3, stride=2, padding=2, dilation=2, groups=2, deformable_groups=2)
    x = torch.randn(2, 8, 11, 13)
    out_hw = (6, 7)
    offset = torch.zeros(2, 2 * 2 * 9, *out_hw)
    out = conv(x, offset)
    ref = F.conv2d(x, conv.weight, None, stride=2, padding=2, dilation=2, groups=2)
    assert out.shape == ref.shape == (2, 6, *out_hw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_offset_layout_is_y_then_x_per_kernel_position():
    """Channel 2k moves kernel tap k vertically, 2k+1 horizontally (detectron2/mmcv layout)."""
    torch.manual_seed(0)
    conv = DeformConv(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 9, 10)
    offset = torch.zeros(1, 18, 9, 10)
    offset[:, 0::2] = 1.0  # every tap one row down: reads x[i + ki, j + kj - 1]
    down = F.pad(x, (1, 1, 0, 2))  # zeros outside the image, as the bilinear sampler
    torch.testing.assert_close(conv(x, offset), F.conv2d(down, conv.weight), rtol=1e-5, atol=1e-5)
    offset = torch.zeros(1, 18, 9, 10)
    offset[:, 1::2] = -1.0  # every tap one column left: reads x[i + ki - 1, j + kj - 2]
    left = F.pad(x, (2, 0, 1, 1))
    torch.testing.assert_close(conv(x, offset), F.conv2d(left, conv.weight), rtol=1e-5, atol=1e-5)
    # and the two are not interchangeable
    assert not torch.allclose(conv(x, offset), F.conv2d(down, conv.weight), atol=1e-3)


def test_modulated_pack_at_init_is_half_a_plain_conv():
    """mmcv/detectron2 DCNv2: zero offset branch -> offsets 0, mask sigmoid(0) = 0.5."""
    torch.manual_seed(0)
    conv = ModulatedDeformConvPack(6, 5, 3, stride=1, padding=1, bias=True)
    assert conv.conv_offset.out_channels == 27
    assert torch.count_nonzero(conv.conv_offset.weight) == 0
    assert torch.count_nonzero(conv.conv_offset.bias) == 0
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 7, 8)
    plain = F.conv2d(x, conv.weight, None, padding=1)
    bias = conv.bias.view(1, -1, 1, 1)
    out = conv(x)
    torch.testing.assert_close(out, 0.5 * plain + bias, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, plain + bias, atol=1e-3)


def test_modulated_pack_gradients_reach_offsets_and_mask():
    torch.manual_seed(0)
    conv = ModulatedDeformConvPack(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    conv(x).square().sum().backward()
    grad = conv.conv_offset.weight.grad
    assert grad is not None
    assert grad[:18].abs().sum() > 0, "no gradient into the offsets"
    assert grad[18:].abs().sum() > 0, "no gradient into the mask"
    assert conv.weight.grad.abs().sum() > 0


def test_modulated_deform_conv_rejects_wrong_offset_channels():
    conv = ModulatedDeformConv(4, 4, 3, padding=1, deformable_groups=2)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset"):
        conv(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 18, 5, 5))
    out = conv(x, torch.zeros(1, 36, 5, 5), torch.ones(1, 18, 5, 5))
    assert out.shape == (1, 4, 5, 5)
    assert conv(x[:0], torch.zeros(0, 36, 5, 5), torch.ones(0, 18, 5, 5)).shape == (0, 4, 5, 5)


def _bottleneck_like(block, **kwargs):
    """detectron2's plain BottleneckBlock with ``block``'s weights (conv2_offset dropped)."""
    plain = BottleneckBlock(**kwargs)
    state = {k: v for k, v in block.state_dict().items() if not k.startswith("conv2_offset")}
    plain.load_state_dict(state)
    return plain


@pytest.mark.parametrize("modulated", [True, False], ids=["dcnv2", "dcnv1"])
def test_deform_bottleneck_block_matches_detectron2_layout(modulated):
    torch.manual_seed(0)
    kwargs = dict(
        in_channels=16, out_channels=32, bottleneck_channels=8, stride=2, num_groups=4,
        norm="BN", stride_in_1x1=False,
    )
    block = DeformBottleneckBlock(**kwargs, deform_modulated=modulated, deform_num_groups=1).eval()
    # detectron2's parameter names, so its DCN checkpoints map one to one
    expected = {
        "shortcut.weight", "conv1.weight", "conv2_offset.weight", "conv2_offset.bias",
        "conv2.weight", "conv3.weight",
    }
    names = {k for k, _ in block.named_parameters() if ".norm." not in k}
    assert names == expected
    assert block.conv2_offset.out_channels == (27 if modulated else 18)
    assert block.conv2_offset.stride == (2, 2) and block.conv2.stride == (2, 2)
    assert torch.count_nonzero(block.conv2_offset.weight) == 0

    x = torch.randn(2, 16, 9, 9)
    plain = _bottleneck_like(block, **kwargs).eval()
    if modulated:
        # At init the mask is 0.5: the same as a plain block with half the conv2 weights.
        with torch.no_grad():
            plain.conv2.weight.mul_(0.5)
        torch.testing.assert_close(block(x), plain(x), rtol=1e-4, atol=1e-5)
        # Offsets are the first 18 channels, mask logits the last 9: a large mask bias
        # (mask -> 1) with zero offsets gives the plain block exactly.
        with torch.no_grad():
            plain.conv2.weight.mul_(2.0)
            block.conv2_offset.bias[18:] = 30.0
        torch.testing.assert_close(block(x), plain(x), rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(block(x), plain(x), rtol=1e-4, atol=1e-5)

    with torch.no_grad():
        block.conv2_offset.bias.zero_()  # back to the initial state (mask gradient alive)
    block.train()
    block(x).sum().backward()
    assert block.conv2_offset.weight.grad.abs().sum() > 0
    if modulated:
        assert block.conv2_offset.weight.grad[18:].abs().sum() > 0


def test_eval_mode_batchnorm_keeps_statistics_and_trains_affine():
    bn = EvalModeBatchNorm2d(3)
    bn.train()
    assert not bn.training
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    bn(x).sum().backward()
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(bn.running_var, torch.ones(3))
    assert bn.weight.requires_grad and bn.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# (b) architecture against torchvision
# ---------------------------------------------------------------------------------------------

TORCHVISION = {
    "R-50": (torchvision.models.resnet50, dict(depth=50)),
    "R-101": (torchvision.models.resnet101, dict(depth=101)),
    "X-101-32x8d": (torchvision.models.resnext101_32x8d,
                    dict(depth=101, num_groups=32, width_per_group=8)),
    "X-101-64x4d": (torchvision.models.resnext101_64x4d,
                    dict(depth=101, num_groups=64, width_per_group=4)),
}


def _resnet(norm="BN", freeze_at=0, out_features=("res2", "res3", "res4", "res5"), **kwargs):
    return ResNet(
        BasicStem(3, 64, norm="FrozenBN" if norm == "EvalBN" else norm),  # as in the configs
        resnet_stages(norm=norm, **kwargs),
        out_features=list(out_features),
        freeze_at=freeze_at,
    )


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_parameters_match_torchvision(name):
    tv_fn, kwargs = TORCHVISION[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        tv = tv_fn()
        ours = _resnet(**kwargs)
        dcn = _resnet(deform_on_per_stage=[False, True, True, True], **kwargs)
    n_fc = sum(p.numel() for p in tv.fc.parameters())
    n_tv = sum(p.numel() for p in tv.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == n_tv - n_fc
    # Name by name: every torchvision tensor (fc aside) has its converted counterpart.
    tv_shapes = {}
    for k, v in tv.state_dict().items():
        new = converter.convert_name(k)
        if new is not None:
            tv_shapes[new] = tuple(v.shape)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()
                   if not k.endswith("num_batches_tracked")}
    assert ours_shapes == tv_shapes
    # DCN c3-c5 adds exactly one 3x3 offset/mask conv (27 channels + bias) per block there.
    widths = [kwargs.get("num_groups", 1) * kwargs.get("width_per_group", 64) * 2 ** i
              for i in range(4)]
    blocks = NUM_BLOCKS_PER_STAGE[kwargs["depth"]]
    extra = sum(blocks[i] * (27 * widths[i] * 9 + 27) for i in (1, 2, 3))
    assert sum(p.numel() for p in dcn.parameters()) == n_ours + extra
    assert sum(isinstance(b, DeformBottleneckBlock) for b in dcn.res2) == 0
    assert all(isinstance(b, DeformBottleneckBlock) for s in (dcn.res3, dcn.res4, dcn.res5)
               for b in s)


# ---------------------------------------------------------------------------------------------
# (c) converted torchvision weights give torchvision's features
# ---------------------------------------------------------------------------------------------


def _randomize_bn(model):
    """Non-trivial BN statistics and affine parameters, so a swapped BN would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def _converted(tv):
    """torchvision model -> detectron2-named tensors, through the conversion tool."""
    return {k: torch.as_tensor(v) for k, v in converter.convert_state_dict(tv.state_dict()).items()}


def _torchvision_features(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    feats = {}
    for i, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4)):
        x = layer(x)
        feats[f"res{i + 2}"] = x
    return feats


def _assert_same_features(ours, tv, x):
    with torch.no_grad():
        got = ours(x)
        want = _torchvision_features(tv, x)
    assert set(got) == set(want)
    for k in want:
        scale = want[k].abs().max().item()
        assert scale > 0
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5 * scale)


def test_converted_torchvision_r50_gives_same_features(tmp_path):
    torch.manual_seed(0)
    tv = _randomize_bn(torchvision.models.resnet50()).eval()
    src = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}}, src)
    dst = tmp_path / "R-50.pkl"
    converter.main([str(src), str(dst)])

    # strict load of the converted tensors: no missing or unexpected key
    ours = _resnet(depth=50, norm="FrozenBN", freeze_at=2).eval()
    state = _converted(tv)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    _assert_same_features(ours, tv, x)

    # the .pkl through detectron2's checkpointer into model.backbone.bottom_up
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = _resnet(depth=50, norm="FrozenBN", freeze_at=2).eval()
    DetectionCheckpointer(model).load(str(dst))
    loaded = model.backbone.bottom_up.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v)
    _assert_same_features(model.backbone.bottom_up, tv, x)


def test_converted_torchvision_x101_64x4d_gives_same_features():
    """HPF's ResNeXt (grouped 3x3), with the reference's BN-in-eval-mode norm."""
    torch.manual_seed(0)
    tv = _randomize_bn(torchvision.models.resnext101_64x4d()).eval()
    ours = _resnet(depth=101, num_groups=64, width_per_group=4, norm="EvalBN", freeze_at=2)
    state = _converted(tv)
    incompatible = ours.load_state_dict(state, strict=False)
    # Only the counters torchvision has and the conversion drops may be missing.
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)
    assert not incompatible.unexpected_keys
    ours.train()  # EvalBN and the frozen stages still normalise with the running statistics
    _assert_same_features(ours, tv, torch.randn(1, 3, 64, 64))


def test_converter_rejects_unknown_names_and_drops_fc():
    assert converter.convert_name("fc.weight") is None
    assert converter.convert_name("layer1.0.bn1.num_batches_tracked") is None
    assert converter.convert_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert converter.convert_name("layer1.0.downsample.1.bias") == "res2.0.shortcut.norm.bias"
    assert converter.convert_name("layer4.2.bn3.weight") == "res5.2.conv3.norm.weight"
    assert converter.convert_name("layer2.1.conv2.conv_offset.bias") == "res3.1.conv2_offset.bias"
    with pytest.raises(KeyError):
        converter.convert_name("layer1.0.se.fc1.weight")
    with pytest.raises(KeyError):
        converter.convert_name("head.weight")


# ---------------------------------------------------------------------------------------------
# (d) config fragments and set_backbone
# ---------------------------------------------------------------------------------------------

# The fragments of hpf.config.backbones as a leaf config imports them.
BACKBONE_CFG = LazyConfig.load(BACKBONES_CONFIG)
EXPECTED_CHANNELS = {
    "resnet50_pytorch_style": [512, 1024, 2048],
    "resnet101_pytorch_style": [512, 1024, 2048],
    "resnet101_dcn_c3_c5": [512, 1024, 2048],
    "resnext101_32x8d": [512, 1024, 2048],
    "resnext101_64x4d": [512, 1024, 2048],
    "resnext101_64x4d_dcn_c3_c5": [512, 1024, 2048],
    "swin_s": [192, 384, 768],
    "swin_b": [256, 512, 1024],
    "swin_l": [384, 768, 1536],
}


def test_every_backbone_has_weights_stats_and_features():
    names = set(BACKBONE_CFG.backbones)
    assert names == set(EXPECTED_CHANNELS)
    for table in ("init_checkpoints", "pixel_stats", "fpn_in_features", "out_channels"):
        assert set(BACKBONE_CFG[table]) == names, table
    for name in names:
        assert BACKBONE_CFG.init_checkpoints[name]
        assert list(BACKBONE_CFG.out_channels[name]) == EXPECTED_CHANNELS[name]
        stats = BACKBONE_CFG.pixel_stats[name]
        assert stats.input_format in ("RGB", "BGR") and len(stats.pixel_std) == 3
    assert BACKBONE_CFG.pixel_stats.resnet50_pytorch_style.input_format == "RGB"
    assert list(BACKBONE_CFG.pixel_stats.swin_l.pixel_std) == [58.395, 57.12, 57.375]
    assert BACKBONE_CFG.pixel_stats.resnext101_32x8d.input_format == "BGR"


@pytest.mark.parametrize("name", list(EXPECTED_CHANNELS))
def test_backbone_fragment_builds_and_runs(name):
    torch.manual_seed(0)
    backbone = instantiate(BACKBONE_CFG.backbones[name])
    features = list(BACKBONE_CFG.fpn_in_features[name])
    shapes = backbone.output_shape()
    assert list(shapes) == features
    assert [shapes[f].channels for f in features] == EXPECTED_CHANNELS[name]
    assert [shapes[f].stride for f in features] == [8, 16, 32]

    backbone.train()
    if name.startswith("swin"):
        # stochastic depth rises linearly to drop_path_rate in the last block
        assert backbone.layers[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
        assert backbone.layers[0].blocks[0].attn.window_size == (7, 7)
    else:
        # stem and res2 frozen; res3-res5 BN in eval mode with trainable affine parameters
        assert isinstance(backbone.stem.conv1.norm, FrozenBatchNorm2d)
        assert all(not p.requires_grad for p in backbone.res2.parameters())
        norm = backbone.res3[0].conv1.norm
        assert isinstance(norm, EvalModeBatchNorm2d) and not norm.training
        assert norm.weight.requires_grad
        assert backbone.res3[0].conv2.stride == (2, 2)  # pytorch style: stride in the 3x3
        deformable = [isinstance(b, DeformBottleneckBlock)
                      for s in (backbone.res3, backbone.res4, backbone.res5) for b in s]
        assert all(deformable) if "dcn" in name else not any(deformable)
        assert not any(isinstance(b, DeformBottleneckBlock) for b in backbone.res2)

    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == features
    for f, c in zip(features, EXPECTED_CHANNELS[name]):
        stride = shapes[f].stride
        assert out[f].shape == (1, c, 64 // stride, 64 // stride)
        assert torch.isfinite(out[f]).all()


def _leaf_config(tmp_path, backbone, top_block, meta_arch="RetinaNet", model_extra=""):
    """
    A leaf config beside (a link to) configs/common that imports the COCO dataloader, the train
    options and ``set_backbone``, loaded as train_net.py loads configs. The detector is written
    inline (an MSRA R-50 FPN skeleton, BGR) so that this test does not depend on how the
    detector configs evolve.
    """
    root = tmp_path / "configs"
    (root / "Leaf").mkdir(parents=True)
    os.symlink(os.path.join(REPO, "configs", "common"), root / "common")
    path = root / "Leaf" / "leaf.py"
    path.write_text(f"""\
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.meta_arch import {meta_arch}

from ..common.data.coco import dataloader
from hpf.config import set_backbone
from ..common.train import train

model = L({meta_arch})(  # only the backbone and the pixel statistics matter here
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block={top_block},
    ),
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    {model_extra}
)
set_backbone(model, "{backbone}", dataloader, train)
""")
    return LazyConfig.load(str(path))


def test_set_backbone_in_a_leaf_config(tmp_path):
    # RetinaNet: P6 from C5 (LastLevelP6P7's default in_feature "res5")
    cfg = _leaf_config(
        tmp_path, "swin_s", "L(LastLevelP6P7)(in_channels=2048, out_channels=256)",
        model_extra='input_format="BGR",',
    )
    fpn = cfg.model.backbone
    assert list(fpn.in_features) == ["p1", "p2", "p3"]
    assert fpn.bottom_up.embed_dim == 96
    # P6 was computed from C5: now from Swin's last stage
    assert fpn.top_block.in_feature == "p3" and fpn.top_block.in_channels == 768
    assert list(cfg.model.pixel_mean) == [123.675, 116.28, 103.53]
    assert list(cfg.model.pixel_std) == [58.395, 57.12, 57.375]
    assert cfg.model.input_format == "RGB"
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.dataloader.test.mapper.image_format == "RGB"
    assert cfg.train.init_checkpoint.startswith("checkpoints/swin_small_patch4_window7_224.pth")

    # The config still serialises as plain yaml (no pickled objects).
    LazyConfig.save(cfg, str(tmp_path / "saved.yaml"))
    assert os.path.exists(str(tmp_path / "saved.yaml"))
    assert not os.path.exists(str(tmp_path / "saved.yaml.pkl"))

    backbone = instantiate(cfg.model.backbone).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert all(v.shape[1] == 256 for v in out.values())
    assert [v.shape[-1] for v in out.values()] == [8, 4, 2, 1, 1]


def test_set_backbone_keeps_a_top_block_on_fpn_outputs(tmp_path):
    # FCOS/ATSS: P6 from the FPN's P5; the model has no input_format
    cfg = _leaf_config(
        tmp_path, "resnext101_64x4d_dcn_c3_c5",
        'L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5")',
        meta_arch="FCOS",
    )
    fpn = cfg.model.backbone
    assert list(fpn.in_features) == ["res3", "res4", "res5"]
    assert list(fpn.bottom_up.stages.deform_on_per_stage) == [False, True, True, True]
    assert fpn.bottom_up.stages.num_groups == 64 and fpn.bottom_up.stages.width_per_group == 4
    assert fpn.top_block.in_feature == "p5" and fpn.top_block.in_channels == 256
    assert "input_format" not in cfg.model
    assert list(cfg.model.pixel_std) == [58.395, 57.12, 57.375]
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.train.init_checkpoint == "checkpoints/X-101-64x4d.pkl"


def test_set_backbone_rejects_unknown_names(tmp_path):
    with pytest.raises(KeyError, match="unknown backbone"):
        _leaf_config(tmp_path, "resnet18", "None")
