#!/usr/bin/env python
"""
Convert an ImageNet ResNet/ResNeXt checkpoint with torchvision's parameter names into a
detectron2 checkpoint for ``train.init_checkpoint``.

Works for torchvision's models (resnet50/101/152, resnext101_32x8d, resnext101_64x4d, ...) and
for mmdetection's pytorch-style ImageNet weights, which use the same names (e.g.
``open-mmlab://resnext101_64x4d`` = resnext101_64x4d-ee2c6f71.pth, what HPF's X-101 configs
load). A ``state_dict``/``model`` wrapper and ``module.``/``backbone.`` prefixes are removed;
the classifier (``fc``) and BatchNorm's ``num_batches_tracked`` are dropped. Any other name that
is not a ResNet parameter is an error, so nothing is lost silently.

    python tools/convert_torchvision_to_d2.py resnet101-63fe2227.pth checkpoints/R-101-torchvision.pkl

The output is a pickle ``{"model": {name: numpy array}, "__author__": "torchvision",
"matching_heuristics": True}``; detectron2's ``DetectionCheckpointer`` then matches
``res2.0.conv1.weight`` to ``backbone.bottom_up.res2.0.conv1.weight``. Use it with
pytorch-style stages (``stride_in_1x1=False``) and RGB input normalised by
mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375] (see
hpf/config/backbones.py).
"""
import argparse
import pickle
import re
import sys
from collections import OrderedDict

import torch

# torchvision / mmdetection name -> detectron2 name (applied to the part after the stage prefix)
_BLOCK_RULES = [
    (re.compile(r"^conv([123])\.weight$"), r"conv\1.weight"),
    (re.compile(r"^bn([123])\.(weight|bias|running_mean|running_var)$"), r"conv\1.norm.\2"),
    (re.compile(r"^downsample\.0\.weight$"), "shortcut.weight"),
    (re.compile(r"^downsample\.1\.(weight|bias|running_mean|running_var)$"), r"shortcut.norm.\1"),
    # mmcv DCNv2 layers (ModulatedDeformConv2dPack), e.g. when converting an mmdet DCN backbone
    (re.compile(r"^conv2\.conv_offset\.(weight|bias)$"), r"conv2_offset.\1"),
]
_STEM_RULES = [
    (re.compile(r"^conv1\.weight$"), "stem.conv1.weight"),
    (re.compile(r"^bn1\.(weight|bias|running_mean|running_var)$"), r"stem.conv1.norm.\1"),
]
_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_DROPPED = re.compile(r"(^fc\.|num_batches_tracked$)")


def _unwrap(obj):
    """The state dict inside a checkpoint file, prefixes removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    out = OrderedDict()
    for name, value in obj.items():
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value
    return out


def convert_name(name: str):
    """detectron2 name of a torchvision ResNet parameter; None for dropped ones (fc, counters)."""
    if _DROPPED.search(name):
        return None
    m = _LAYER.match(name)
    if m:
        stage, block, rest = m.groups()
        for pattern, repl in _BLOCK_RULES:
            if pattern.match(rest):
                return f"res{int(stage) + 1}.{block}.{pattern.sub(repl, rest)}"
    else:
        for pattern, repl in _STEM_RULES:
            if pattern.match(name):
                return pattern.sub(repl, name)
    raise KeyError(f"'{name}' is not a parameter of a torchvision ResNet/ResNeXt")


def convert_state_dict(state_dict):
    """torchvision-named state dict (or checkpoint) -> OrderedDict of detectron2 names -> numpy."""
    converted = OrderedDict()
    for name, value in _unwrap(state_dict).items():
        new = convert_name(name)
        if new is None:
            continue
        if new in converted:
            raise KeyError(f"two parameters map to '{new}'")
        converted[new] = value.detach().cpu().numpy() if torch.is_tensor(value) else value
    if not converted:
        raise ValueError("no ResNet parameter found in the checkpoint")
    return converted


def convert_file(src: str, dst: str):
    state = torch.load(src, map_location="cpu", weights_only=True)
    converted = convert_state_dict(state)
    with open(dst, "wb") as f:
        pickle.dump(
            {"model": converted, "__author__": "torchvision", "matching_heuristics": True}, f
        )
    return converted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision/mmdet ImageNet checkpoint (.pth)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)
    converted = convert_file(args.input, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
