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
from hpf.config import has_key
from hpf.losses import (
    FocalLoss,
    GHMCLoss,
    GHMRLoss,
    GuidedLossScale,
    OHEMLoss,
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


# The last model built, by its config: leaf configs that change only the schedule or the data
# (1x / 1.5x / 2x, multi-scale) share it instead of building the same network again; one
# entry, so that at most one large backbone stays in memory.
_last_model = {}


def _instantiate_model(model_cfg):
    key = str(model_cfg)
    if key not in _last_model:
        _last_model.clear()
        _last_model[key] = instantiate(model_cfg)
    return _last_model[key]


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_config_loads_and_model_instantiates(path):
    cfg = LazyConfig.load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{path} lacks '{key}'"
    model = _instantiate_model(cfg.model)
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
    # Learned Sampling-Free weights (delta, sigma_i) train at the base lr with weight decay:
    # the official optimizer exempts only parameters named "bias".
    for pname, p in model.named_parameters():
        if "loss_balance." in pname:
            assert group_of[id(p)]["lr"] == pytest.approx(cfg.optimizer.lr), pname
            assert group_of[id(p)]["weight_decay"] == pytest.approx(cfg.optimizer.weight_decay), pname


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
    # RGB ImageNet mean; BGR: detectron2's MSRA / FAIR mean, or Keras' "caffe" mean (the npm R-50)
    assert any(math.isclose(first, m) for m in (123.675, 103.53, 103.939)), first
    assert math.isclose(first, 123.675) == (fmt == "RGB"), (fmt, list(cfg.model.pixel_mean))


@pytest.mark.parametrize("name", _coco("atss_*.py") + _coco("gfl_*.py") + _coco("vfnet_*.py")
                         + _coco("tood_*.py"))
def test_mmdetection_coco_configs_are_rgb_with_weights(name):
    # torchvision / open-mmlab / Swin weights: RGB input, as the mmdetection detectors of HPF.
    cfg = _load(name)
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.model.input_format == "RGB"
    # TOOD has its own normalisers (the sum of its alignment targets), no such argument.
    assert cfg.model.get("loss_normalizer", "mean") == "mean"
    assert cfg.train.init_checkpoint


# The progressive form of each detector's own classification loss, its w and loss_weight, each
# equal to the base loss at gamma_ad = 2: focal loss -> HPF, QFL -> PF-QFL (HPF Eq. 6: w 1,
# times 2), VFL -> PF-VFL (Eq. 7, w = alpha * gamma of VFL).
PROGRESSIVE_FORM = {
    "gfl": (ProgressiveQualityFocalLoss, 1.0, 2.0),
    "tood": (ProgressiveQualityFocalLoss, 1.0, 2.0),
    "vfnet": (ProgressiveVarifocalLoss, 1.5, 1.0),
}


@pytest.mark.parametrize("name", _coco("*hpf*.py"))
def test_hpf_configs_use_the_progressive_form_of_their_loss(name):
    cfg = _load(name)
    loss = cfg.model.cls_loss
    target, w, weight = PROGRESSIVE_FORM.get(name.split("_")[0], (ProgressiveFocalLoss, 0.5, 1.0))
    assert loss._target_ is target
    expected = "all" if "hpf_all" in name else "image" if "hpf_image" in name else "level"
    assert loss.sampling == expected
    assert (loss.gamma, loss.delta, loss.w, loss.get("loss_weight", 1.0)) == (2.0, 0.5, w, weight)
    if "initial_cls_loss" in cfg.model:  # TOOD's focal loss of its ATSS phase
        initial = cfg.model.initial_cls_loss
        assert initial._target_ is ProgressiveFocalLoss and initial.sampling == "level"
        assert (initial.gamma, initial.delta, initial.w) == (2.0, 0.5, 0.5)


def test_progressive_quality_losses():
    qfl = _load("atss_pfqfl_R_50_FPN_1x").model.cls_loss
    assert qfl._target_ is ProgressiveQualityFocalLoss and qfl.sampling == "level"
    # w 1 and twice the loss: QFL itself at gamma_ad = 2.
    assert (qfl.w, qfl.loss_weight) == (1.0, 2.0)
    vfl = _load("atss_pfvfl_R_50_FPN_1x").model.cls_loss
    # w = alpha * gamma of VFL (0.75 * 2): VFL itself at gamma_ad = 2.
    assert vfl._target_ is ProgressiveVarifocalLoss and vfl.w == 1.5 and vfl.sampling == "level"


# Ablations that drop one Sampling-Free ingredient on purpose (test_sampling_free_ablations).
SF_ABLATIONS = ("_bias_only_", "_scaling_only_", "retinanet_sampling_free_focal_")


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "sampling_free" in p and "rcnn" not in p
             and not any(a in p for a in SF_ABLATIONS)], ids=_ids
)
def test_sampling_free_configs(path):
    """COCO: the official code of each row (RetinaNet / FCOS: delta^2 weighting; ATSS: the
    GuidedLoss form; fixed prior and threshold). Shapes: the data's own "auto" values."""
    model = LazyConfig.load(path).model
    assert model.cls_loss._target_ is SamplingFreeCELoss
    assert model.loss_balance._target_ is GuidedLossScale
    name = os.path.basename(path)
    if "Shapes" in path or "NeonTrees" in path:
        assert model.prior_prob == "auto" and model.test_score_thresh == "auto"
        return
    arch = name.split("_")[0]
    official = {"retinanet": ("learned_scale", 1e-5), "fcos": ("learned_scale", 1e-4),
                "atss": ("guided_loss", 3e-3)}[arch]
    assert (model.loss_balance.mode, model.prior_prob) == official
    assert model.test_score_thresh == 1e-3
    if arch == "atss":
        assert (model.loss_balance.num_losses, model.loss_balance.freeze_after) == (3, 100)
    if arch == "retinanet" and "ghmr" not in name:  # GHM-R's row ran in mmdetection's GHM code
        assert model.test_nms_thresh == 0.4


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


GHMC_CLS = (GHMCLoss, dict(bins=30, momentum=0.75, per_level=True))
GHMR_BOX = (GHMRLoss, dict(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0))
# The GHM paper's RetinaNet rows in the official GHM setup: (classification, box loss or None
# for smooth L1) as (target, arguments).
GHM_RETINANET = {
    "retinanet_ghmc_R_50_FPN_1x": (GHMC_CLS, None),  # Table 4 "GHM-C"
    "retinanet_ghm_R_50_FPN_1x": (GHMC_CLS, GHMR_BOX),  # Table 5 "GHM-R"
    # Table 1: no EMA
    "retinanet_ghmc_noema_R_50_FPN_1x": ((GHMCLoss, dict(bins=30, momentum=0.0)), None),
    # Table 4 "CE": one unit region, no EMA, x20
    "retinanet_ce_R_50_FPN_1x": (
        (GHMCLoss, dict(bins=1, momentum=0.0, per_level=True, loss_weight=20.0)), None),
    "retinanet_ohem_R_50_FPN_1x": ((OHEMLoss, dict(neg_pos_ratio=3.0)), None),  # Table 4
    # Table 5 "ASL1": GHM-R with one unit region and no EMA
    "retinanet_ghmc_asl1_R_50_FPN_1x": (
        GHMC_CLS, (GHMRLoss, dict(mu=0.02, bins=1, momentum=0.0, loss_weight=10.0))),
}


def test_ghm_retinanet_configs_are_listed():
    assert {n for n in _coco("retinanet_ghm*.py") if "sampling_free" not in n} <= set(GHM_RETINANET)


@pytest.mark.parametrize("name", sorted(GHM_RETINANET))
def test_ghm_configs(name):
    cfg = _load(name)
    assert cfg.train.clip_grad.max_norm == 35.0
    assert cfg.model.prior_prob == 0.01
    assert list(cfg.model.box2box_transform.weights) == [1.0, 1.0, 1.0, 1.0]
    assert cfg.lr_multiplier.warmup_factor == pytest.approx(1 / 3)
    (cls_target, cls_args), box = GHM_RETINANET[name]
    assert cfg.model.cls_loss._target_ is cls_target
    assert {k: cfg.model.cls_loss[k] for k in cls_args} == cls_args
    if box is None:
        assert cfg.model.box_loss is None and cfg.model.smooth_l1_beta == 0.11
    else:
        assert cfg.model.box_loss._target_ is box[0]
        assert {k: cfg.model.box_loss[k] for k in box[1]} == box[1]


@pytest.mark.parametrize("name", _coco("*.py"))
def test_gradient_clipping_only_in_ghm_configs(name):
    # The official GHM (mmdetection) setup clips at 35; the GHM paper's RetinaNet rows share it.
    ghm_setup = name in GHM_RETINANET or name.startswith("retinanet_ghm")
    assert bool(_load(name).train.get("clip_grad")) == ghm_setup


@pytest.mark.parametrize("name, base, field", [
    ("retinanet_ghmc_noema_R_50_FPN_1x", "retinanet_ghmc_R_50_FPN_1x", "cls_loss"),
    ("retinanet_ce_R_50_FPN_1x", "retinanet_ghmc_R_50_FPN_1x", "cls_loss"),
    ("retinanet_ohem_R_50_FPN_1x", "retinanet_ghmc_R_50_FPN_1x", "cls_loss"),
    ("retinanet_ghmc_asl1_R_50_FPN_1x", "retinanet_ghm_R_50_FPN_1x", "box_loss"),
    # HPF Table 4 "P.F." only / Table 5 "all-level" and "per-sample" at 1.5x
    ("atss_hpf_all_R_50_FPN_1_5x", "atss_hpf_R_50_FPN_1_5x", "cls_loss"),
    ("atss_hpf_image_R_50_FPN_1_5x", "atss_hpf_R_50_FPN_1_5x", "cls_loss"),
])
def test_ablation_configs_change_one_model_field(name, base, field):
    cfg, base = _load(name), _load(base)
    assert cfg.model[field] != base.model[field]
    _same_except(cfg, base, [field])


def test_swin_l_mstest_config():
    """HPF Table 9's 55.1 row: the Swin-L config evaluated through DenseDetectorWithTTA at
    mmdetection's (1200, 800) ... (1600, 1200) with flip, merged at the model's NMS and cap."""
    from hpf.modeling import DenseDetectorWithTTA

    cfg, base = _load("atss_hpf_Swin_L_FPN_ms_2x_mstest"), _load("atss_hpf_Swin_L_FPN_ms_2x")
    tta = cfg.test_time_augmentation
    assert tta._target_ is DenseDetectorWithTTA
    assert [tuple(s) for s in tta.sizes] == [(800, 1200), (900, 1300), (1000, 1500), (1200, 1600)]
    assert tta.flip is True and "nms_thresh" not in tta and "max_detections_per_image" not in tta
    assert (cfg.model.test_nms_thresh, cfg.model.max_detections_per_image) == (0.6, 100)
    assert len(cfg.dataloader.test.mapper.augmentations) == 0  # the wrapper resizes
    assert "test_time_augmentation" not in base
    base.dataloader.test.mapper.augmentations = []
    _same_except(cfg, base)


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


@pytest.mark.parametrize("name", _coco("atss_*_2x.py"))  # mmdetection's 24 epochs
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
    if "test_time_augmentation" in cfg:  # its wrapper resizes (test_swin_l_mstest_config)
        return
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
    sf_rpn, sf_roi = RCNN_SF[name.replace("R_101", "R_50").replace("_2x", "_1x")]
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
        # Baseline and Sampling-Free share their box losses: maskrcnn-benchmark's smooth L1
        # (beta 1/9 RPN, 1 RoI) for the rows trained there, detectron2's L1 for Cascade R-CNN.
        if name.startswith("cascade"):
            assert "smooth_l1_beta" not in p and "smooth_l1_beta" not in rpn
        else:
            assert p.smooth_l1_beta == 1.0 and rpn.smooth_l1_beta == pytest.approx(1 / 9)
    has_mask = name.startswith("mask")
    assert (roi.get("mask_head") is not None) == has_mask
    assert cfg.dataloader.train.mapper.get("use_instance_mask", False) == has_mask
    assert cfg.model.backbone.bottom_up.stages.depth == (101 if "R_101" in name else 50)
    assert cfg.optimizer.lr == 0.02
    assert cfg.train.max_iter == (180000 if name.endswith("_2x") else 90000)


def _same_except(cfg, base, model_fields=(), keys=("model", "dataloader", "optimizer",
                                                     "lr_multiplier", "train")):
    """cfg equals base in every key, except the model fields it names (set from cfg)."""
    for field in model_fields:
        base.model[field] = cfg.model[field]
    for key in keys:
        assert cfg[key] == base[key], key


TREES_DIR = os.path.join(REPO, "configs", "NeonTrees")
# Each NEON tree-crown run against its focal-loss base: the model fields and train keys it may
# change (the loss, its balance, prior and threshold; where it writes).
TREES_CHANGES = {
    "hpf": ({"cls_loss"}, {"output_dir"}),
    "sampling_free": ({"cls_loss", "loss_balance", "prior_prob", "test_score_thresh"},
                      {"output_dir", "foreground_stats_images"}),
}


@pytest.mark.parametrize("arch", ["retinanet", "atss"])
@pytest.mark.parametrize("variant", sorted(TREES_CHANGES))
def test_neon_trees_configs_change_only_the_loss(arch, variant):
    """make compare-trees changes one thing per run: the classification ingredient."""
    base = LazyConfig.load(os.path.join(TREES_DIR, f"{arch}_R_50_FPN_focal.py"))
    cfg = LazyConfig.load(os.path.join(TREES_DIR, f"{arch}_R_50_FPN_{variant}.py"))
    fields, train_keys = TREES_CHANGES[variant]
    assert all(cfg.model.get(f) != base.model.get(f) for f in fields)
    assert cfg.train.output_dir != base.train.output_dir
    for key in train_keys:
        base.train[key] = cfg.train[key]
    _same_except(cfg, base, fields)


def test_neon_trees_scratch_config_drops_only_the_weights():
    base = LazyConfig.load(os.path.join(TREES_DIR, "retinanet_R_50_FPN_focal.py"))
    cfg = LazyConfig.load(os.path.join(TREES_DIR, "retinanet_R_50_FPN_focal_scratch.py"))
    assert base.train.init_checkpoint == "weights/R-50-keras.pkl" and cfg.train.init_checkpoint == ""
    bottom_up = cfg.model.backbone.bottom_up
    assert (bottom_up.freeze_at, bottom_up.stem.norm, bottom_up.stages.norm) == (0, "GN", "GN")
    for key in ("init_checkpoint", "output_dir"):
        base.train[key] = cfg.train[key]
    base.model.backbone.bottom_up = bottom_up
    _same_except(cfg, base)


def test_neon_trees_retinanet_and_atss_share_the_budget():
    retina = LazyConfig.load(os.path.join(TREES_DIR, "retinanet_R_50_FPN_focal.py"))
    atss = LazyConfig.load(os.path.join(TREES_DIR, "atss_R_50_FPN_focal.py"))
    assert atss.train.output_dir != retina.train.output_dir
    atss.train.output_dir = retina.train.output_dir  # the evaluator's output follows it
    for key in ("dataloader", "optimizer", "lr_multiplier", "train"):
        assert atss[key] == retina[key], key
    for cfg in (retina, atss):
        assert cfg.train.init_checkpoint == "weights/R-50-keras.pkl"
        assert cfg.model.backbone.bottom_up.stages.stride_in_1x1 is True
        assert cfg.model.input_format == "BGR" and list(cfg.model.pixel_std) == [1.0, 1.0, 1.0]
        assert cfg.dataloader.train.dataset.names == "neon_trees_train"
        assert cfg.dataloader.test.dataset.names == "neon_trees_val"


SF_R50 = "retinanet_sampling_free_R_50_FPN_1x"


@pytest.mark.parametrize("name, changed", [
    # Conference Table 3 columns (journal Table IV(a)) and the focal baseline of the papers.
    ("retinanet_sampling_free_bias_only_R_50_FPN_1x", {"loss_balance": None}),
    ("retinanet_sampling_free_scaling_only_R_50_FPN_1x", {"prior_prob": 0.01}),
    ("retinanet_sampling_free_focal_R_50_FPN_1x", {"cls_loss": FocalLoss}),
    ("retinanet_fl_R_50_FPN_1x", {"cls_loss": FocalLoss, "loss_balance": None,
                                  "prior_prob": 0.01, "test_score_thresh": 0.05}),
])
def test_sampling_free_ablations(name, changed):
    """Each ablation changes only its ingredients of the Sampling-Free config."""
    cfg, base = _load(name), _load(SF_R50)
    assert base.model.loss_balance._target_ is GuidedLossScale
    for field, value in changed.items():
        if field == "cls_loss":
            assert cfg.model.cls_loss._target_ is value
            assert (cfg.model.cls_loss.alpha, cfg.model.cls_loss.gamma) == (0.25, 2.0)
        else:
            assert cfg.model[field] == value, field
    _same_except(cfg, base, changed)


def test_ghmr_sampling_free_is_ghm_with_sampling_free_classification():
    """Conference Table 6: GHM's config and GHM-R box loss, Sampling-Free's classification."""
    cfg = _load("retinanet_ghmr_sampling_free_R_50_FPN_1x")
    sf, ghm = _load(SF_R50).model, _load("retinanet_ghm_R_50_FPN_1x")
    fields = ("cls_loss", "loss_balance", "prior_prob", "test_score_thresh")
    for field in fields:
        assert cfg.model[field] == sf[field], field
    assert cfg.model.box_loss._target_ is GHMRLoss
    assert list(cfg.model.box2box_transform.weights) == [1.0, 1.0, 1.0, 1.0]
    assert cfg.train.clip_grad.max_norm == 35.0
    _same_except(cfg, ghm, fields)


@pytest.mark.parametrize("name", _coco("*_R_101_FPN_[12]x.py"))
def test_r101_and_2x_configs_change_only_depth_and_schedule(name):
    """R-101 rows (conference Table 7, journal Table V): the R-50 config with depth 101 and
    MSRA R-101 weights; the 2x rows: the 1x config on 180k iterations, x0.1 at 120k / 160k."""
    cfg = _load(name)
    assert cfg.model.backbone.bottom_up.stages.depth == 101
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    if name.endswith("_2x"):
        one_x = _load(name.replace("_2x", "_1x"))
        lr = cfg.lr_multiplier
        assert cfg.train.max_iter == lr.scheduler.num_updates == 180000
        assert list(lr.scheduler.milestones) == [120000, 160000]
        assert lr.warmup_factor == pytest.approx(1 / 3)
        assert lr.warmup_length * 180000 == pytest.approx(500)
        one_x.train.max_iter = 180000
        _same_except(cfg, one_x, keys=("model", "dataloader", "optimizer", "train"))
    else:
        r50 = _load(name.replace("R_101", "R_50"))
        r50.model.backbone.bottom_up.stages.depth = 101
        r50.train.init_checkpoint = cfg.train.init_checkpoint
        _same_except(cfg, r50)


VOC_DIR = os.path.join(REPO, "configs", "PascalVOC-Detection")
VOC_CONFIGS = {
    # VOC config (journal Table VI): its COCO counterpart
    "retinanet_R_50_FPN_0_2x": "retinanet_fl_R_50_FPN_1x",
    "retinanet_sampling_free_R_50_FPN_0_2x": "retinanet_sampling_free_R_50_FPN_1x",
    "faster_rcnn_R_50_FPN_0_2x": "faster_rcnn_R_50_FPN_1x",
    "faster_rcnn_sampling_free_R_50_FPN_0_2x": "faster_rcnn_sampling_free_R_50_FPN_1x",
}


def test_voc_configs_are_listed():
    found = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(VOC_DIR, "*.py")))
    assert found == sorted(VOC_CONFIGS)


@pytest.mark.parametrize("name", sorted(VOC_CONFIGS))
def test_voc_configs(name):
    """VOC 07+12 trainval -> 07 test with the VOC evaluator, 20 classes, 800 / 1333 input,
    18k iterations (x0.1 at 12k, 16k); otherwise the COCO config's model and solver."""
    from hpf.evaluation import build_evaluator

    cfg = LazyConfig.load(os.path.join(VOC_DIR, name + ".py"))
    coco = _load(VOC_CONFIGS[name])
    data = cfg.dataloader
    assert list(data.train.dataset.names) == ["voc_2007_trainval", "voc_2012_trainval"]
    assert data.test.dataset.names == "voc_2007_test"
    assert data.evaluator._target_ is build_evaluator
    for split in ("train", "test"):
        resize = data[split].mapper.augmentations[0]
        assert resize._target_ is ResizeShortestEdge
        assert (resize.short_edge_length, resize.max_size) == (800, 1333)
    assert cfg.train.max_iter == cfg.lr_multiplier.scheduler.num_updates == 18000
    assert list(cfg.lr_multiplier.scheduler.milestones) == [12000, 16000]
    assert cfg.lr_multiplier.warmup_factor == pytest.approx(1 / 3)
    rcnn = "rcnn" in name
    assert (cfg.model.roi_heads.num_classes if rcnn else cfg.model.num_classes) == 20
    if rcnn:
        coco.model.roi_heads.num_classes = 20
    else:
        coco.model.num_classes = 20
    assert cfg.model == coco.model
    assert cfg.optimizer == coco.optimizer
    coco.train.max_iter = 18000
    assert cfg.train == coco.train


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
    train_net.py refuses unknown keys (hpf.config.apply_overrides), so a doc that drops
    a needed "+" hands users a KeyError."""
    overrides = _documented_overrides()
    assert len(overrides) > 20  # the docs' overrides are found at all
    configs = [LazyConfig.load(p) for p in CONFIGS]
    missing = [
        f"{doc}: {key}" for doc, key in overrides
        if not any(has_key(cfg, key) for cfg in configs)
    ]
    assert not missing, "documented overrides of keys no config has:\n" + "\n".join(missing)
