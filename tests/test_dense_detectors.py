"""RetinaNet and FCOS with every pluggable loss: forward + backward with empty and non-empty
instances, inference, per-level statistics in the EventStorage, and the "auto" prior."""
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO
from hpf.losses import (
    FocalLoss,
    GHMCLoss,
    GHMRLoss,
    GuidedLossScale,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    QualityFocalLoss,
    SamplingFreeCELoss,
    VarifocalLoss,
    optimal_prior,
    prior_bias,
)
from hpf.modeling import FCOS, RetinaNet
from hpf.modeling.priors import count_foreground_anchors, initialize_auto_priors

NUM_CLASSES = 3


MODEL_CONFIGS = {
    "retinanet": "retinanet.py",
    "fcos": "fcos.py",
    "atss": "atss.py",
}


def tiny_model_cfg(arch):
    """The project's model config of ``arch`` made tiny: 8-64 channel ResNet, 64-channel FPN
    (32 GroupNorm groups need >= 2 values each on 1x1 P7 maps), one conv per head tower."""
    from hpf.config import use_small_resnet_fpn

    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common", "models",
                                       MODEL_CONFIGS[arch])).model
    use_small_resnet_fpn(cfg, widths=(8, 16, 32, 64), fpn_channels=64, head_convs=1)
    cfg.num_classes = NUM_CLASSES
    if arch == "retinanet":
        cfg.anchor_generator.sizes = [[16, 20], [32, 40], [64, 80], [128, 160], [256, 320]]
        cfg.head.num_anchors = 6
    if arch == "atss":
        cfg.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    return cfg


def batch(num_boxes=(3, 0), size=96):
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in num_boxes:
        inst = Instances((size, size))
        xy = torch.rand(n, 2, generator=gen) * size * 0.6
        wh = torch.rand(n, 2, generator=gen) * size * 0.35 + 8
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        image = torch.randint(0, 255, (3, size, size), generator=gen).float()
        out.append({"image": image, "instances": inst, "height": size, "width": size})
    return out


CLS_LOSSES = {
    "focal": lambda: FocalLoss(),
    "hpf_level": lambda: ProgressiveFocalLoss(sampling="level"),
    "hpf_all": lambda: ProgressiveFocalLoss(sampling="all"),
    "hpf_image": lambda: ProgressiveFocalLoss(sampling="image"),
    "ghmc": lambda: GHMCLoss(),
    "ghmc_all_levels": lambda: GHMCLoss(per_level=False),
    "sampling_free": lambda: SamplingFreeCELoss(),
    "qfl": lambda: QualityFocalLoss(),
    "vfl": lambda: VarifocalLoss(),
    "pf_qfl": lambda: ProgressiveQualityFocalLoss(),
    "pf_vfl": lambda: ProgressiveVarifocalLoss(w=1.5),
}


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "atss"])
@pytest.mark.parametrize("loss_name", sorted(CLS_LOSSES))
def test_training_step_and_inference(arch, loss_name):
    torch.manual_seed(0)
    cfg = tiny_model_cfg(arch)
    cfg.cls_loss = CLS_LOSSES[loss_name]()
    if loss_name == "sampling_free":
        cfg.loss_balance = GuidedLossScale()
    if arch == "retinanet" and loss_name.startswith("ghmc"):
        cfg.box_loss = GHMRLoss()
    model = instantiate(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(batch((3, 0)))
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert model.head.cls_score.weight.grad.abs().sum() > 0
        logged = storage.latest()
        for level in range(5):
            assert f"num_pos/level{level}" in logged
        if loss_name.startswith(("hpf", "pf_")):
            assert "gamma_ad/level4" in logged and "alpha_ad/level0" in logged
            g = logged["gamma_ad/level0"][0]
            assert 1.5 <= g <= 2.5
        if loss_name == "sampling_free":
            assert "guided_ratio" in logged
            cls_key = [k for k in losses if "cls" in k][0]
            reg_key = [k for k in losses if "loc" in k or "box" in k][0]
            # guided scaling: the scaled classification loss equals the box loss in value
            assert torch.allclose(losses[cls_key], losses[reg_key], rtol=1e-5)
    model.eval()
    with torch.no_grad():
        out = model(batch((2,)))
    assert len(out) == 1 and out[0]["instances"].pred_boxes.tensor.shape[1] == 4


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "atss"])
def test_empty_batch_trains(arch):
    model = instantiate(tiny_model_cfg(arch))
    model.train()
    with EventStorage():
        losses = model(batch((0, 0)))
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("arch", ["fcos", "atss"])
@pytest.mark.parametrize("loss_name", ["qfl", "vfl", "pf_qfl", "pf_vfl"])
def test_quality_losses_are_given_iou_targets(arch, loss_name):
    """The positives' targets are IoUs of the decoded boxes with their ground truth (< 1 for an
    untrained head), not one-hot rows."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg(arch)
    cfg.cls_loss = CLS_LOSSES[loss_name]()
    model = instantiate(cfg)
    seen = []
    model.cls_loss.register_forward_pre_hook(
        lambda module, args: seen.append(torch.cat([t.flatten() for t in args[1]])))
    model.train()
    with EventStorage():
        model(batch((3, 1)))
    targets = seen[0]
    positive = targets[targets > 0]
    assert len(positive) > 0 and (positive < 1).all(), positive


def test_quality_loss_needs_quality_targets_error_is_clear():
    model = instantiate(tiny_model_cfg("fcos"))
    gt_labels = torch.zeros(1, 4, dtype=torch.long)
    model.cls_loss = QualityFocalLoss()
    with pytest.raises(ValueError, match="needs IoU-quality targets"):
        with EventStorage():
            model._classification_loss([torch.zeros(1, 4, NUM_CLASSES)], gt_labels, 1.0)


def image_with_boxes(boxes, size=64):
    """A blank ``size`` x ``size`` image holding ``boxes`` (x0, y0, x1, y1), all class 1."""
    inst = Instances((size, size), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     gt_classes=torch.ones(len(boxes), dtype=torch.long))
    return {"image": torch.zeros(3, size, size), "instances": inst, "height": size, "width": size}


# Counted by hand on 64x64 images. Every model here has one anchor (or point) per location:
# 8x8 + 4x4 + 2x2 + 1 + 1 = 86 per image on P3-P7 (strides 8-128; anchor centres at multiples
# of the stride, FCOS points half a stride further), and labels none of them "ignore", so
# N = 86 per image.
#  * RetinaNet, anchor side = stride: the anchors of a level tile the image. A box equal to an
#    anchor (IoU 1) is its only match: every other anchor overlaps it by IoU <= 0.25 (< 0.4).
#    [20, 20, 28, 28] is the P3 anchor at (24, 24), [24, 24, 40, 40] the P4 one at (32, 32),
#    [16, 16, 48, 48] the P5 one at (32, 32): N_f = 3.
#  * FCOS (detectron2's rule: within 1.5 strides of the box centre, strictly inside the box,
#    max(l, t, r, b) in 0-64 on P3, 64-128 on P4, ...): [16, 16, 40, 40] (centre 28) has the
#    P3 points x, y in {20, 28, 36}: 9; its only P4 point inside, (24, 24), is at most 16 px
#    from a side (not in 64-128). [0, 0, 16, 16] (centre 8): x, y in {4, 12}: 4. N_f = 9 + 4.
#  * ATSS, anchor side 8 x stride, box = the image [0, 0, 64, 64] centred on (32, 32): the 9
#    nearest anchors of P3 and P4 (3x3 blocks, no ties), the 4 of P5, 1 of P6 and P7 have IoU
#    1 (P3 centre), 56 / 72 = 0.78 (P3 edges, 4), 0.62 (P3 corners, 4), 0.25 (P4, 9),
#    1 / 16 (P5, 4), 1 / 64 (P6), 1 / 256 (P7): mean 0.38, std 0.29-0.30, threshold about
#    0.68, so the centre and the 4 edge anchors of P3 are foreground: N_f = 5 per image.
HAND_COUNTED = {
    "retinanet": ([[20, 20, 28, 28], [24, 24, 40, 40]], 2, [[16, 16, 48, 48]], 1),
    "fcos": ([[16, 16, 40, 40]], 9, [[0, 0, 16, 16]], 4),
    "atss": ([[0, 0, 64, 64]], 5, [[0, 0, 64, 64]], 5),
}


def hand_countable_model_cfg(arch):
    cfg = tiny_model_cfg(arch)
    if arch == "retinanet":
        cfg.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
        cfg.anchor_generator.aspect_ratios = [1.0]
        cfg.head.num_anchors = 1
    if arch == "atss":
        cfg.anchor_generator.sizes = [[64], [128], [256], [512], [1024]]
    return cfg


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "atss"])
def test_auto_prior_and_threshold_from_hand_counted_anchors(arch, tmp_path):
    first, first_fg, second, second_fg = HAND_COUNTED[arch]
    cfg = hand_countable_model_cfg(arch)
    cfg.prior_prob = "auto"
    cfg.test_score_thresh = "auto"
    model = instantiate(cfg)
    data = [[image_with_boxes(first)], [image_with_boxes(second)]]  # two batches of one image
    expected_f, expected_n = first_fg + second_fg, 86 * 2
    assert count_foreground_anchors(model, data, num_images=2) == (expected_f, expected_n)
    assert count_foreground_anchors(model, data, num_images=1) == (first_fg, 86)

    record = initialize_auto_priors(model, data, num_images=2, output_dir=str(tmp_path))
    pi = expected_f / (expected_n * NUM_CLASSES)  # Eq. 9: N_f / (N C)
    assert optimal_prior(expected_f, expected_n, NUM_CLASSES) == pytest.approx(pi)
    assert record["num_foreground_anchors"] == expected_f
    assert record["num_anchors"] == expected_n
    assert record["prior_prob"] == pytest.approx(pi)
    bias = model.head.cls_score.bias
    assert prior_bias(pi) == pytest.approx(math.log(pi / (1 - pi)))  # sigmoid(bias) = pi
    assert torch.allclose(bias, torch.full_like(bias, math.log(pi / (1 - pi))))
    assert model.test_score_thresh == pytest.approx(expected_f / expected_n)
    assert (tmp_path / "foreground_stats.json").is_file()
    # The statistics travel in the checkpoint: a fresh model gets the same threshold.
    fresh = instantiate(cfg)
    assert fresh.test_score_thresh is None
    fresh.load_state_dict(model.state_dict())
    assert fresh.test_score_thresh == pytest.approx(expected_f / expected_n)


def test_auto_threshold_without_statistics_is_a_clear_error():
    cfg = tiny_model_cfg("fcos")
    cfg.test_score_thresh = "auto"
    model = instantiate(cfg).eval()
    with pytest.raises(RuntimeError, match="test_score_thresh='auto' needs"):
        with torch.no_grad():
            model(batch((1,)))


def test_models_are_the_detectron2_detectors():
    from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
    from detectron2.modeling.meta_arch.retinanet import RetinaNet as D2RetinaNet

    assert issubclass(FCOS, D2FCOS) and issubclass(RetinaNet, D2RetinaNet)
    # Only `losses` (and FCOS's range rule) is overridden: labelling and inference are
    # detectron2's.
    assert RetinaNet.label_anchors is D2RetinaNet.label_anchors
    assert FCOS.label_anchors is D2FCOS.label_anchors
    assert RetinaNet.inference_single_image is D2RetinaNet.inference_single_image


OVERFIT_CASES = [("atss", name) for name in sorted(CLS_LOSSES)] + [
    (arch, name) for arch in ("retinanet", "fcos") for name in ("focal", "hpf_level", "sampling_free")
]


@pytest.mark.parametrize("arch,loss_name", OVERFIT_CASES)
def test_loss_decreases_when_fitting_one_batch(arch, loss_name):
    """A short training run: 20 AdamW steps on one batch lower the total loss."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg(arch)
    cfg.cls_loss = CLS_LOSSES[loss_name]()
    if loss_name == "sampling_free":
        cfg.loss_balance = GuidedLossScale()
    # detectron2's EMA normaliser starts at 300 (FCOS) and shrinks towards the true count, which
    # raises the loss value by itself: compare with the batch count instead.
    cfg.loss_normalizer = "mean"
    model = instantiate(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data = batch((4, 2))
    totals = []
    with EventStorage() as storage:
        for i in range(20):
            storage.iter = i
            loss = sum(model(data).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3, totals


def test_bad_detector_arguments_name_the_argument():
    cfg = tiny_model_cfg("fcos")
    cfg.regress_ranges = [(0, 32), (32, float("inf"))]
    with pytest.raises(ValueError, match="regress_ranges has 2 entries but the head has 5 levels"):
        instantiate(cfg)
    cfg = tiny_model_cfg("atss")
    cfg.loss_normalizer = "median"
    with pytest.raises(ValueError, match="loss_normalizer must be 'ema' or 'mean'"):
        instantiate(cfg)
    from hpf.modeling import basic_resnet_stages

    with pytest.raises(ValueError, match=r"widths \(8, 16\) and num_blocks \(2, 2, 2\)"):
        basic_resnet_stages(widths=(8, 16), num_blocks=(2, 2, 2))


BALANCE_NUM_LOSSES = {"retinanet": 2, "fcos": 3, "atss": 3}


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "atss"])
@pytest.mark.parametrize("mode", ["learned_scale", "guided_loss"])
def test_learned_balance_is_part_of_the_model(arch, mode):
    """The learned weights of the official Sampling-Free forms: an extra ``loss_*`` term in the
    loss dict, parameters of the detector (state dict, optimizer with weight decay, gradients),
    logged with the ratio; the guided_loss ratio is guided by the mean of the other losses."""
    from detectron2.solver.build import get_default_optimizer_params

    torch.manual_seed(0)
    cfg = tiny_model_cfg(arch)
    cfg.cls_loss = SamplingFreeCELoss()
    num_losses = BALANCE_NUM_LOSSES[arch] if mode == "guided_loss" else None
    cfg.loss_balance = GuidedLossScale(mode=mode, num_losses=num_losses)
    model = instantiate(cfg)
    model.train()
    name = "loss_balance.delta" if mode == "learned_scale" else "loss_balance.sigmas"
    assert name in dict(model.named_parameters()) and name in model.state_dict()
    # The official optimizer decays every parameter except biases: so does detectron2's.
    groups = get_default_optimizer_params(model, base_lr=0.01, weight_decay=1e-4,
                                          weight_decay_norm=1e-4, bias_lr_factor=2.0,
                                          weight_decay_bias=0.0)
    param = dict(model.named_parameters())[name]
    group = [g for g in groups if any(p is param for p in g["params"])][0]
    assert group["weight_decay"] == 1e-4 and group["lr"] == 0.01

    with EventStorage() as storage:
        losses = model(batch((3, 1)))
        cls_key = [k for k in losses if k.endswith("cls")][0]
        assert f"{cls_key}_balance" in losses
        assert losses[f"{cls_key}_balance"].item() == pytest.approx(0.0, abs=1e-6)  # weights at 1
        others = [v for k, v in losses.items() if k != cls_key and not k.endswith("_balance")]
        if mode == "learned_scale":
            box_key = [k for k in losses if "box" in k or "loc" in k][0]
            assert losses[cls_key].item() == pytest.approx(losses[box_key].item(), rel=1e-5)
        else:
            # sigma = 1 halves every loss; cls was scaled to the mean of the others.
            assert losses[cls_key].item() == pytest.approx(
                sum(v.item() for v in others) / len(others), rel=1e-5)
        sum(losses.values()).backward()
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0
        logged = storage.latest()
        assert "guided_ratio" in logged
        if mode == "learned_scale":
            assert logged["delta_sq"][0] == 1.0
        else:
            assert logged[f"sigma_sq/{cls_key}"][0] == 1.0
