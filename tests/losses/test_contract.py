"""The loss contract (hpf.losses.contract): every loss subclasses its base, the detectors log what
metrics() returns and nothing else of a loss, a loss outside the contract is refused at
construction, and GHM-C's normalizer is documented and unused."""

import pytest
import torch
import torch.nn as nn
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.utils.events import EventStorage

import hpf.losses
from hpf.losses import (
    BoxRegressionLoss,
    ClassificationLoss,
    DistributionFocalLoss,
    FocalLoss,
    GHMCLoss,
    GHMRLoss,
    GuidedLossScale,
    OHEMLoss,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    QualityFocalLoss,
    SamplingFreeCELoss,
    VarifocalLoss,
)
from hpf.modeling import GHMRFastRCNNOutputLayers

CLASSIFICATION = [
    FocalLoss, QualityFocalLoss, VarifocalLoss, SamplingFreeCELoss, OHEMLoss, GHMCLoss,
    ProgressiveFocalLoss, ProgressiveQualityFocalLoss, ProgressiveVarifocalLoss,
]


def pyramid(seed=0, images=2, sizes=(6, 3), classes=3):
    gen = torch.Generator().manual_seed(seed)
    logits = [torch.randn(images, n, classes, generator=gen) * 2 for n in sizes]
    targets = [(torch.rand(images, n, classes, generator=gen) < 0.3).float() for n in sizes]
    return logits, targets


def test_every_public_loss_subclasses_its_base():
    for cls in CLASSIFICATION:
        assert issubclass(cls, ClassificationLoss), cls
        assert isinstance(cls.uses_quality_targets, bool), cls
    assert issubclass(GHMRLoss, BoxRegressionLoss)
    public_modules = [getattr(hpf.losses, n) for n in hpf.losses.__all__]
    losses = {c for c in public_modules if isinstance(c, type) and issubclass(c, nn.Module)}
    # Besides the contract: the loss balance, and GFL's box-distribution loss, which only GFL
    # calls (its inputs are bin logits, not deltas).
    assert losses - {ClassificationLoss, BoxRegressionLoss} == set(CLASSIFICATION) | {
        GHMRLoss, GuidedLossScale, DistributionFocalLoss}
    assert QualityFocalLoss.uses_quality_targets and VarifocalLoss.uses_quality_targets
    assert not FocalLoss.uses_quality_targets


@pytest.mark.parametrize("cls", [FocalLoss, QualityFocalLoss, VarifocalLoss, SamplingFreeCELoss,
                                 OHEMLoss, GHMCLoss])
def test_losses_without_metrics_return_an_empty_dict(cls):
    logits, targets = pyramid()
    loss = cls()
    loss(logits, targets, 3.0)
    assert loss.metrics() == {}
    assert GHMRLoss().metrics() == {}


@pytest.mark.parametrize("cls", [ProgressiveFocalLoss, ProgressiveQualityFocalLoss,
                                 ProgressiveVarifocalLoss])
@pytest.mark.parametrize("sampling", ["level", "all", "image"])
def test_hpf_metrics_are_gamma_and_alpha_per_level(cls, sampling):
    loss = cls(sampling=sampling, delta=1.0)
    assert loss.metrics() == {}  # nothing before the first forward
    logits, targets = pyramid()
    loss(logits, targets, 3.0)
    metrics = loss.metrics()
    assert sorted(metrics) == sorted(
        f"{name}/level{k}" for name in ("gamma_ad", "alpha_ad") for k in range(2)
    )
    for name, per_level in (("gamma_ad", loss.last_gamma), ("alpha_ad", loss.last_alpha)):
        # "image": one value per image ([L, B]); the metric is their mean over the images.
        expected = per_level.mean(1) if sampling == "image" else per_level
        assert per_level.shape == ((2, 2) if sampling == "image" else (2,))
        for k in range(2):
            assert metrics[f"{name}/level{k}"] == expected[k].item()
            assert isinstance(metrics[f"{name}/level{k}"], float)


def test_hpf_image_metrics_mean_over_images_by_hand():
    # Image 0: one positive with x = 0 (-log sigma = log 2); image 1: one with x = -1.
    # gamma_ad per image = log 2 and softplus(1); logged: their mean, on every level.
    logits = [torch.tensor([[[0.0]], [[-1.0]]]), torch.full((2, 1, 1), -5.0)]
    targets = [torch.ones(2, 1, 1), torch.zeros(2, 1, 1)]
    loss = ProgressiveFocalLoss(sampling="image", gamma=1.0, delta=1.0, w=0.5)
    loss(logits, targets, 2.0)
    g0, g1 = torch.log(torch.tensor(2.0)), torch.nn.functional.softplus(torch.tensor(1.0))
    gamma = (g0 + g1).item() / 2
    metrics = loss.metrics()
    for k in range(2):
        assert metrics[f"gamma_ad/level{k}"] == pytest.approx(gamma, rel=1e-6)
        assert metrics[f"alpha_ad/level{k}"] == pytest.approx(
            (0.5 / g0 + 0.5 / g1).item() / 2, rel=1e-6)


def _train_step(cfg):
    from test_dense_detectors import batch

    model = instantiate(cfg).train()
    with EventStorage() as storage:
        losses = model(batch((3, 0)))
        sum(losses.values()).backward()
        logged = {k: v[0] for k, v in storage.latest().items()}
    return model, logged


@pytest.mark.parametrize("arch,sampling", [("retinanet", "image"), ("atss", "level")])
def test_detectors_log_exactly_the_metrics(arch, sampling):
    from test_dense_detectors import tiny_model_cfg

    torch.manual_seed(0)
    cfg = tiny_model_cfg(arch)
    cfg.cls_loss = ProgressiveFocalLoss(sampling=sampling)
    cfg.loss_balance = GuidedLossScale(mode="learned_scale")
    model, logged = _train_step(cfg)
    metrics = {**model.cls_loss.metrics(), **model.loss_balance.metrics()}
    assert {"gamma_ad/level4", "alpha_ad/level0", "guided_ratio", "delta_sq"} <= set(metrics)
    for name, value in metrics.items():
        assert logged[name] == value, name
    # Nothing else of the loss is logged: the other scalars are the detector's own.
    others = {k for k in logged if k not in metrics}
    assert all(k.startswith(("num_pos", "loss_")) or k == "num_pos_anchors" for k in others), others


def test_guided_loss_scale_metrics_replace_scalars():
    scale = GuidedLossScale(mode="guided_loss", num_losses=2)
    assert scale.metrics() == {"guided_ratio": 0.0, "sigma_sq/0": 1.0, "sigma_sq/1": 1.0}
    scale({"loss_cls": torch.tensor(2.0), "loss_box": torch.tensor(1.0)}, "loss_cls", "loss_box")
    assert scale.metrics() == {"guided_ratio": 0.5, "sigma_sq/loss_cls": 1.0,
                               "sigma_sq/loss_box": 1.0}
    assert not hasattr(scale, "scalars")


class _PlainBCE(nn.Module):
    """A loss written for another interface: not a ClassificationLoss."""

    def forward(self, logits, targets):
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "atss"])
def test_non_conforming_classification_loss_is_refused_at_construction(arch):
    from test_dense_detectors import tiny_model_cfg

    cfg = tiny_model_cfg(arch)
    cfg.cls_loss = _PlainBCE()
    with pytest.raises(TypeError, match=r"cls_loss is a .*_PlainBCE, which does not subclass "
                                        r"hpf\.losses\.ClassificationLoss: subclass it"):
        instantiate(cfg)


def test_non_conforming_box_loss_is_refused_at_construction():
    from detectron2.modeling.box_regression import Box2BoxTransform
    from test_dense_detectors import tiny_model_cfg

    cfg = tiny_model_cfg("retinanet")
    cfg.box_loss = nn.SmoothL1Loss()
    with pytest.raises(TypeError, match=r"box_loss is a .*SmoothL1Loss, which does not subclass "
                                        r"hpf\.losses\.BoxRegressionLoss"):
        instantiate(cfg)
    # A classification loss is not a box loss either.
    with pytest.raises(TypeError, match=r"GHMCLoss, which does not subclass .*BoxRegressionLoss"):
        GHMRFastRCNNOutputLayers(ShapeSpec(channels=8), box2box_transform=Box2BoxTransform(
            (10.0, 10.0, 5.0, 5.0)), num_classes=2, box_loss=GHMCLoss())


def test_ghmc_does_not_use_the_normalizer():
    # One unit region, no EMA: every beta = 1 and GHM-C is the mean BCE over the valid entries,
    # whatever normalizer the detector passes (GHM-C divides by its own valid count).
    logits, targets = pyramid(seed=1)
    valid = [torch.rand(2, 6) < 0.7, torch.ones(2, 3, dtype=torch.bool)]
    loss = GHMCLoss(bins=1, momentum=0.0)
    values = [loss(logits, targets, n, valid) for n in (1.0, 37.5, torch.tensor(4.0))]
    assert values[0] == values[1] == values[2]
    expected = sum(
        nn.functional.binary_cross_entropy_with_logits(x[v], t[v])
        for x, t, v in zip(logits, targets, valid)
    )
    torch.testing.assert_close(values[0], expected)
    assert "normalizer" in GHMCLoss.__doc__ and "not used" in GHMCLoss.__doc__
    # The losses that use it divide by it.
    focal = FocalLoss()
    torch.testing.assert_close(focal(logits, targets, 2.0), focal(logits, targets, 1.0) / 2)
