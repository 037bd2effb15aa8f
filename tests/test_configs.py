"""Every config under configs/ loads and its model instantiates (no weights are loaded); cheap
checks of the COCO leaf configs' wiring (losses, schedules, input format, augmentations)."""
import glob
import math
import os
import re

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.transforms import ResizeShortestEdge

from conftest import REPO
from hpf.engine.config import has_key
from hpf.losses import (
    GHMCLoss,
    GHMRLoss,
    GuidedLossScale,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    SamplingFreeCELoss,
)

CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if os.sep + "common" + os.sep not in p
)
COCO_DIR = os.path.join(REPO, "configs", "COCO-Detection")
_ids = lambda p: os.path.relpath(p, REPO)  # noqa: E731


def _coco(pattern):
    """Names (without .py) of the COCO-Detection configs matching a glob pattern."""
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(COCO_DIR, pattern)))


def _load(name):
    return LazyConfig.load(os.path.join(COCO_DIR, name + ".py"))


def test_configs_are_found():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_config_loads_and_model_instantiates(path):
    cfg = LazyConfig.load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{path} lacks '{key}'"
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0
    # The optimizer and schedule instantiate against the model too.
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert len(optimizer.param_groups) > 0
    scheduler = instantiate(cfg.lr_multiplier)
    assert 0 < scheduler(0.5) <= 1.0

    name = os.path.basename(path)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    if "Swin" in name:
        # AdamW 1e-4 / 0.05; no decay on norms and Swin's relative position bias tables.
        assert isinstance(optimizer, torch.optim.AdamW)
        seen = set()
        for module_name, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                group = group_of[id(p)]
                assert group["lr"] == pytest.approx(1e-4)
                if pname == "relative_position_bias_table":
                    kind = "rel_pos"
                elif isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                    kind = "norm"
                elif pname == "weight" and p.dim() > 1:
                    kind = "weight"
                else:
                    continue
                seen.add(kind)
                expected = 0.05 if kind == "weight" else 0.0
                assert group["weight_decay"] == expected, f"{module_name}.{pname}"
        assert seen == {"rel_pos", "norm", "weight"}
    if name.startswith("retinanet_sampling_free"):
        # maskrcnn-benchmark solver: bias lr x2, no weight decay on biases.
        bias = model.head.cls_score.bias
        assert group_of[id(bias)]["lr"] == pytest.approx(2 * cfg.optimizer.lr)
        assert group_of[id(bias)]["weight_decay"] == 0.0


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_schedule_length_matches_max_iter(path):
    """The LR schedule's milestones are absolute iterations: it must span train.max_iter."""
    cfg = LazyConfig.load(path)
    assert cfg.lr_multiplier.scheduler.num_updates == cfg.train.max_iter


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_input_format_matches_pixel_stats(path):
    """Images reach the model in the channel order its normalisation (and weights) expect."""
    cfg = LazyConfig.load(path)
    fmt = cfg.dataloader.train.mapper.image_format
    assert cfg.dataloader.test.mapper.image_format == fmt
    if "input_format" in cfg.model:
        assert cfg.model.input_format == fmt
    first = cfg.model.pixel_mean[0]
    assert math.isclose(first, 123.675) or math.isclose(first, 103.53), first
    assert math.isclose(first, 123.675) == (fmt == "RGB"), (fmt, list(cfg.model.pixel_mean))


@pytest.mark.parametrize("name", _coco("atss_*.py"))
def test_atss_coco_configs_are_rgb_with_weights(name):
    # torchvision / open-mmlab / Swin weights: RGB input, as the mmdetection ATSS of HPF.
    cfg = _load(name)
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.model.input_format == "RGB"
    assert cfg.model.loss_normalizer == "mean"
    assert cfg.train.init_checkpoint


@pytest.mark.parametrize("name", _coco("*hpf*.py"))
def test_hpf_configs_use_progressive_focal_loss(name):
    cfg = _load(name)
    loss = cfg.model.cls_loss
    assert loss._target_ is ProgressiveFocalLoss
    expected = "all" if "hpf_all" in name else "image" if "hpf_image" in name else "level"
    assert loss.sampling == expected
    assert (loss.gamma, loss.delta, loss.w) == (2.0, 0.5, 0.5)


def test_progressive_quality_losses():
    qfl = _load("atss_pfqfl_R_50_FPN_1x").model.cls_loss
    assert qfl._target_ is ProgressiveQualityFocalLoss and qfl.w == 0.5 and qfl.sampling == "level"
    vfl = _load("atss_pfvfl_R_50_FPN_1x").model.cls_loss
    # w = alpha * gamma of VFL (0.75 * 2): VFL itself at gamma_ad = 2.
    assert vfl._target_ is ProgressiveVarifocalLoss and vfl.w == 1.5 and vfl.sampling == "level"


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "sampling_free" in p and "rcnn" not in p], ids=_ids
)
def test_sampling_free_configs(path):
    model = LazyConfig.load(path).model
    assert model.cls_loss._target_ is SamplingFreeCELoss
    assert model.loss_balance._target_ is GuidedLossScale
    assert model.prior_prob == "auto"
    assert model.test_score_thresh == "auto"


@pytest.mark.parametrize("name", ["faster_rcnn_R18h_FPN", "faster_rcnn_R18h_FPN_sampling_free"])
def test_shapes_sgd_configs_change_only_the_optimizer(name):
    shapes = os.path.join(REPO, "configs", "Shapes")
    adamw = LazyConfig.load(os.path.join(shapes, name + ".py"))
    sgd = LazyConfig.load(os.path.join(shapes, name + "_sgd.py"))
    assert adamw.optimizer._target_ is torch.optim.AdamW
    assert sgd.optimizer._target_ is torch.optim.SGD
    assert (sgd.optimizer.lr, sgd.optimizer.momentum, sgd.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
    assert sgd.train.output_dir != adamw.train.output_dir
    sgd.train.output_dir = adamw.train.output_dir  # the evaluator's output follows it
    for key in ("model", "dataloader", "lr_multiplier", "train"):
        assert sgd[key] == adamw[key], key


@pytest.mark.parametrize("name", _coco("*ghm*.py"))
def test_ghm_configs(name):
    cfg = _load(name)
    assert cfg.train.clip_grad.max_norm == 35.0
    loss = cfg.model.cls_loss
    assert loss._target_ is GHMCLoss
    assert (loss.bins, loss.momentum, loss.per_level) == (30, 0.75, True)
    assert cfg.model.prior_prob == 0.01
    assert list(cfg.model.box2box_transform.weights) == [1.0, 1.0, 1.0, 1.0]
    assert cfg.lr_multiplier.warmup_factor == pytest.approx(1 / 3)
    if name.startswith("retinanet_ghm_"):
        box = cfg.model.box_loss
        assert box._target_ is GHMRLoss
        assert (box.mu, box.bins, box.momentum, box.loss_weight) == (0.02, 10, 0.7, 10.0)
    else:
        assert cfg.model.box_loss is None and cfg.model.smooth_l1_beta == 0.11


@pytest.mark.parametrize("name", _coco("*.py"))
def test_gradient_clipping_only_in_ghm_configs(name):
    assert bool(_load(name).train.get("clip_grad")) == ("ghm" in name)


@pytest.mark.parametrize("name", _coco("*_1_5x.py"))
def test_1_5x_schedule_is_the_hpf_papers(name):
    """HPF Sec. 5: x0.1 at 90k and 120k of 135k iterations, 500-iteration linear warm-up."""
    cfg = _load(name)
    assert cfg.train.max_iter == 135000
    lr = instantiate(cfg.lr_multiplier)
    at = lambda it: lr(it / 135000)  # noqa: E731
    assert at(0) == pytest.approx(0.001)
    assert at(250) < 1.0 and at(500) == pytest.approx(1.0)
    assert at(89999) == pytest.approx(1.0) and at(90000) == pytest.approx(0.1)
    assert at(119999) == pytest.approx(0.1) and at(120000) == pytest.approx(0.01)
    assert at(134999) == pytest.approx(0.01)
    if "hpf" in name:
        assert cfg.model.centerness_loss_weight == 1.0  # the official code's (paper text: 0.5)


@pytest.mark.parametrize("name", _coco("*_2x.py"))
def test_2x_schedule(name):
    cfg = _load(name)
    assert cfg.train.max_iter == 176000
    assert list(cfg.lr_multiplier.scheduler.milestones) == [117300, 161300]


@pytest.mark.parametrize("name", _coco("*.py"))
def test_train_resize(name):
    cfg = _load(name)
    resize = cfg.dataloader.train.mapper.augmentations[0]
    assert resize._target_ is ResizeShortestEdge and resize.max_size == 1333
    if "_ms_" in name:
        assert resize.sample_style == "range"
        expected = (480, 960) if "Swin" in name else (640, 800)
        assert tuple(resize.short_edge_length) == expected
    elif name.startswith("cascade_rcnn"):
        # trained in detectron2 by the Sampling-Free paper: detectron2's multi-scale "choice"
        assert resize.sample_style == "choice"
        assert tuple(resize.short_edge_length) == tuple(range(640, 801, 32))
    else:
        assert resize.short_edge_length == 800  # single scale, as the papers
    test_resize = cfg.dataloader.test.mapper.augmentations[0]
    assert test_resize.short_edge_length == 800 and test_resize.max_size == 1333


RCNN_SF = {
    # config: (Sampling-Free RPN, Sampling-Free RoI heads)
    "faster_rcnn_R_50_FPN_1x": (False, False),
    "faster_rcnn_sampling_free_rpn_R_50_FPN_1x": (True, False),
    "faster_rcnn_sampling_free_roi_R_50_FPN_1x": (False, True),
    "faster_rcnn_sampling_free_R_50_FPN_1x": (True, True),
    "cascade_rcnn_R_50_FPN_1x": (False, False),
    "cascade_rcnn_sampling_free_R_50_FPN_1x": (True, True),
    "mask_rcnn_R_50_FPN_1x": (False, False),
    "mask_rcnn_sampling_free_R_50_FPN_1x": (True, True),
}


@pytest.mark.parametrize("name", sorted(RCNN_SF) + _coco("*rcnn*_R_101_*.py"))
def test_rcnn_configs(name):
    """Which parts are Sampling-Free, the guided factors (1 in the RPN, 2 per RoI stage), the
    detection-only cascade and the mask branch, R-101 depth, and the R-CNN solver."""
    from detectron2.modeling.proposal_generator import RPN
    from hpf.modeling import SamplingFreeFastRCNNOutputLayers, SamplingFreeRPN

    cfg = _load(name)
    sf_rpn, sf_roi = RCNN_SF[name.replace("R_101", "R_50")]
    rpn = cfg.model.proposal_generator
    assert rpn._target_ is (SamplingFreeRPN if sf_rpn else RPN)
    if sf_rpn:
        assert rpn.prior_prob == "auto" and rpn.loss_balance.factor == 1.0
    roi = cfg.model.roi_heads
    predictors = roi.box_predictors if "box_predictors" in roi else [roi.box_predictor]
    assert len(predictors) == (3 if name.startswith("cascade") else 1)
    for p in predictors:
        assert (p._target_ is SamplingFreeFastRCNNOutputLayers) == sf_roi
        assert p.test_score_thresh == (1e-3 if sf_roi else 0.05)
        if sf_roi:
            assert p.loss_balance.factor == 2.0
            assert p.smooth_l1_beta == 1.0  # the official RoI box loss
        else:
            assert "smooth_l1_beta" not in p  # detectron2's L1
    has_mask = name.startswith("mask")
    assert (roi.get("mask_head") is not None) == has_mask
    assert cfg.dataloader.train.mapper.get("use_instance_mask", False) == has_mask
    assert cfg.model.backbone.bottom_up.stages.depth == (101 if "R_101" in name else 50)
    assert cfg.optimizer.lr == 0.02 and cfg.train.max_iter == 90000


BAD_INPUT_EXAMPLE = "train.max_itr"  # README.md's unknown-key example, a typo on purpose
DOCS = ["README.md", "projects/HPF/README.md", "configs/COCO-Detection/README.md",
        "datasets/README.md"]
# `key=value` overrides written in the docs; a key split over two lines ("model.a.\n  b=1") is
# joined first. A leading "+" adds a key on purpose and is not looked up.
_OVERRIDE = re.compile(r"(?<![\w.])(\+?)((?:model|train|optimizer|lr_multiplier|dataloader)"
                       r"(?:\.\w+)+)=")


def _documented_overrides():
    found = set()
    for doc in DOCS:
        with open(os.path.join(REPO, doc)) as f:
            text = re.sub(r"\.\n\s+", ".", f.read())
        found.update((doc, key) for plus, key in _OVERRIDE.findall(text)
                     if not plus and key != BAD_INPUT_EXAMPLE)
    return sorted(found)


def test_documented_overrides_name_existing_keys():
    """Every override the docs tell users to type names a key of at least one config:
    train_net.py refuses unknown keys (hpf.engine.config.apply_overrides), so a doc that drops
    a needed "+" hands users a KeyError."""
    overrides = _documented_overrides()
    assert len(overrides) > 20  # the docs' overrides are found at all
    configs = [LazyConfig.load(p) for p in CONFIGS]
    missing = [
        f"{doc}: {key}" for doc, key in overrides
        if not any(has_key(cfg, key) for cfg in configs)
    ]
    assert not missing, "documented overrides of keys no config has:\n" + "\n".join(missing)
