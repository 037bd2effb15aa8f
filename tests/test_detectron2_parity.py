"""hpf.modeling.RetinaNet and FCOS with FocalLoss(0.25, 2) are detectron2's RetinaNet and FCOS:
the same losses and gradients with the same weights and inputs, the same detections, and FCOS's
explicit regression ranges set to detectron2's stock ones match anchors as detectron2 does."""
import copy
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.modeling.meta_arch.retinanet import RetinaNet as D2RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from conftest import REPO, synthetic_batch
from hpf.config import use_small_resnet_fpn
from hpf.losses import FocalLoss
from hpf.modeling import FCOS, RetinaNet

NUM_CLASSES = 3
SIZE = 128
# Arguments of hpf's detectors that detectron2's do not take.
HPF_ONLY = ("cls_loss", "box_loss", "loss_balance", "prior_prob", "box_loss_weight",
            "loss_normalizer", "regress_ranges")


pytestmark = pytest.mark.usefixtures("one_thread")


def model_cfgs(arch):
    """(hpf config, detectron2 config) of the project's RetinaNet / FCOS model config with a
    small backbone: the same sub-modules and arguments, the loss given as FocalLoss(0.25, 2)
    to ours and as focal_loss_alpha / gamma to detectron2's."""
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common", "models", arch + ".py")).model
    use_small_resnet_fpn(cfg, widths=(8, 16, 32, 64), fpn_channels=64, head_convs=2)
    cfg.num_classes = NUM_CLASSES
    cfg.cls_loss = FocalLoss(alpha=0.25, gamma=2.0)
    if arch == "retinanet":
        cfg.anchor_generator.sizes = [[16, 20], [32, 40], [64, 80], [128, 160], [256, 320]]
        cfg.head.num_anchors = 6
        cfg.smooth_l1_beta = 0.1  # detectron2's default is 0.0: make the beta matter
    d2_cfg = copy.deepcopy(cfg)
    d2_cfg._target_ = D2RetinaNet if arch == "retinanet" else D2FCOS
    for key in HPF_ONLY:
        d2_cfg.pop(key, None)
    d2_cfg.focal_loss_alpha = 0.25
    d2_cfg.focal_loss_gamma = 2.0
    return cfg, d2_cfg


def twin_models(arch):
    """hpf's detector and detectron2's, the latter loaded with the former's weights."""
    cfg, d2_cfg = model_cfgs(arch)
    torch.manual_seed(0)
    ours = instantiate(cfg)
    theirs = instantiate(d2_cfg)
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    # Only our foreground statistics (Sampling-Free's "auto") have no counterpart.
    assert result.missing_keys == []
    assert result.unexpected_keys == ["foreground_stats"]
    return ours, theirs


def batch(num_boxes, seed):
    return synthetic_batch(num_boxes, SIZE, NUM_CLASSES, seed=seed)


@pytest.mark.parametrize("arch,hpf_class,d2_class", [
    ("retinanet", RetinaNet, D2RetinaNet), ("fcos", FCOS, D2FCOS)])
def test_training_losses_and_gradients_equal_detectron2(arch, hpf_class, d2_class):
    """Two training steps (one batch with boxes in both images, one half-empty batch, so that
    detectron2's EMA loss normaliser moves): the same loss dict, and the same gradients of
    every parameter on the first step."""
    ours, theirs = twin_models(arch)
    assert type(ours) is hpf_class and type(theirs) is d2_class
    ours.train()
    theirs.train()
    for step, num_boxes in enumerate([(3, 2), (2, 0)]):
        data = batch(num_boxes, seed=step)
        with EventStorage():
            ours_losses = ours(data)
            theirs_losses = theirs(data)
        assert set(ours_losses) == set(theirs_losses)
        for name, value in theirs_losses.items():
            assert value.item() > 0, name
            assert ours_losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
        if step == 0:
            sum(ours_losses.values()).backward()
            sum(theirs_losses.values()).backward()
            theirs_params = dict(theirs.named_parameters())
            for name, p in ours.named_parameters():
                q = theirs_params[name]
                if q.grad is None:
                    assert p.grad is None, name
                    continue
                assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_inference_equals_detectron2(arch):
    """In eval mode both return the same boxes, scores and classes."""
    ours, theirs = twin_models(arch)
    ours.test_score_thresh = theirs.test_score_thresh = 0.0  # untrained: let boxes through
    ours.eval()
    theirs.eval()
    data = batch((2, 1), seed=3)
    with torch.no_grad():
        ours_out, theirs_out = ours(data), theirs(data)
    for a, b in zip(ours_out, theirs_out):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.allclose(a.scores, b.scores)
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor)


STOCK_RANGES = [(0, 64), (64, 128), (128, 256), (256, 512), (512, float("inf"))]


def fcos_anchors(height, width, strides=(8, 16, 32, 64, 128)):
    """FCOS's anchor points as detectron2 makes them: one stride-sized box per location."""
    gen = DefaultAnchorGenerator(sizes=[[s] for s in strides], aspect_ratios=[1.0],
                                 strides=list(strides))
    feats = [torch.zeros(1, 1, math.ceil(height / s), math.ceil(width / s)) for s in strides]
    return gen(feats)


def test_fcos_explicit_stock_regress_ranges_match_detectron2():
    """``_match_anchors`` with regress_ranges set to (0, 64) ... (512, inf) on P3-P7 gives
    detectron2's match-quality matrix exactly, on random boxes of 8-900 px and on boxes whose
    largest anchor-to-side distance lies exactly on a range boundary."""
    cfg, _ = model_cfgs("fcos")
    cfg.regress_ranges = STOCK_RANGES
    model = instantiate(cfg)
    assert model.regress_ranges == [tuple(float(v) for v in r) for r in STOCK_RANGES]
    anchors = fcos_anchors(1024, 960)
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=gen) * 500
    wh = torch.exp(torch.rand(60, 2, generator=gen) * math.log(900 / 8)) * 8
    random_boxes = torch.cat([xy, xy + wh], 1)
    # Anchor centres lie at (i + 0.5) x stride. Box 0: P3's centre (36, 36) is 64 px from the
    # left side (64 = P3's upper / P4's lower bound); box 1: P4's centre (40, 40) is 128 px
    # from the left side (P4's upper / P5's lower bound). Both centres are inside their box and
    # its centre-sampling region.
    boundary = torch.tensor([[36.0 - 64, 10.0, 88.0, 60.0], [40.0 - 128, -10.0, 150.0, 100.0]])
    for boxes in (random_boxes, boundary):
        gt = Boxes(boxes)
        ours = model._match_anchors(gt, anchors)
        theirs = D2FCOS._match_anchors(model, gt, anchors)
        assert ours.shape == theirs.shape == (len(boxes), sum(len(a) for a in anchors))
        assert torch.equal(ours, theirs)
        assert (ours > 0).any()

    def index(level, x, y):
        start = sum(len(a) for a in anchors[:level])
        hit = (anchors[level].get_centers() == torch.tensor([x, y])).all(1).nonzero()
        return start + hit.item()

    # Bounds are strict, as detectron2's: the anchors on a boundary are matched on no level,
    # their neighbours closer to the box centre are.
    assert ours[0, index(0, 36.0, 36.0)] == 0 and ours[0, index(0, 28.0, 36.0)] > 0
    assert ours[1, index(1, 40.0, 40.0)] == 0 and ours[1, index(1, 24.0, 40.0)] > 0


def test_fcos_smaller_regress_ranges_change_the_matching():
    """Non-stock regress ranges are honoured: a 40 px box is matched on P3 with the stock
    ranges, on P4 when P3's range ends at 16."""
    cfg, _ = model_cfgs("fcos")
    cfg.regress_ranges = [(0, 16), (16, 64), (64, 128), (128, 256), (256, float("inf"))]
    model = instantiate(cfg)
    anchors = fcos_anchors(128, 128)
    gt = Boxes(torch.tensor([[20.0, 20.0, 60.0, 60.0]]))
    level_of = torch.cat([torch.full((len(a),), i) for i, a in enumerate(anchors)])
    ours = model._match_anchors(gt, anchors)[0] > 0
    stock = D2FCOS._match_anchors(model, gt, anchors)[0] > 0
    assert set(level_of[stock].tolist()) == {0}
    assert set(level_of[ours].tolist()) == {1}
