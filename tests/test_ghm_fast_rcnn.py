"""GHM-R in the RoI head of Faster R-CNN (GHM Table 7): the box loss by hand, the COCO config's
wiring, and a training step + inference of a tiny model."""
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.events import EventStorage

from conftest import REPO, synthetic_batch
from hpf.losses import GHMRLoss
from hpf.modeling import GHMRFastRCNNOutputLayers


def batch(num_boxes, size=96):
    return synthetic_batch(num_boxes, size, 3, spread=0.6, extent=0.35, min_side=12)


def test_box_reg_loss_by_hand():
    predictor = GHMRFastRCNNOutputLayers(
        ShapeSpec(channels=8), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=2, box_loss=GHMRLoss(mu=0.02, bins=10, momentum=0.0, loss_weight=1.0),
    )
    # RoI 0: class 0, proposal = ground truth (target deltas 0). RoI 1: class 1, the ground
    # truth 1 px right of a 10-px proposal: target dx = 10 x 1/10 = 1. RoI 2: background.
    proposals = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    gt_boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]])
    gt_classes = torch.tensor([0, 1, 2])
    big = [5.0, 5.0, 5.0, 5.0]  # deltas of classes other than the ground truth's: not used
    pred = torch.tensor([
        [0.0, 0.001, 1.0, 0.0] + big,
        big + [1.0, 0.0, 0.0, 0.001],
        big + big,
    ], requires_grad=True)
    # d = pred - target over the 8 foreground coordinates: [0, .001, 1, 0, 0, 0, 0, .001].
    # g = |d| / sqrt(d^2 + mu^2): 7 in bin 0, g(1) = 0.9998 in bin 9; tot 8, 2 non-empty
    # bins: beta = 8 / 7 / 2 and 8 / 1 / 2. ASL1(0.001) = 0.0000249844, ASL1(1) = 0.980200.
    # loss = (8 / 14 x 2 x 0.0000249844 + 4 x 0.980200) / 8 = 0.490104
    loss = predictor.box_reg_loss(proposals, gt_boxes, pred, gt_classes)
    assert loss.item() == pytest.approx(0.490104, abs=1e-6)
    loss.backward()
    assert pred.grad[:, 4:][0].abs().sum() == 0 and pred.grad[1, :4].abs().sum() == 0
    assert pred.grad[2].abs().sum() == 0  # background RoI
    assert pred.grad[0, 2] > 0  # d = 1: pushed back


def test_coco_config_wiring():
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection",
                                       "faster_rcnn_ghmr_R_50_FPN_1x.py"))
    base = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection",
                                        "faster_rcnn_R_50_FPN_1x.py"))
    predictor = cfg.model.roi_heads.box_predictor
    assert predictor._target_ is GHMRFastRCNNOutputLayers
    box_loss = predictor.box_loss
    assert box_loss._target_ is GHMRLoss
    assert (box_loss.mu, box_loss.bins, box_loss.momentum) == (0.02, 10, 0.7)
    # Only the box loss differs from the smooth-L1 / L1 baseline config.
    del predictor.box_loss
    predictor._target_ = base.model.roi_heads.box_predictor._target_
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert cfg[key] == base[key], key


def test_trains_a_step_and_infers():
    from hpf.config import use_small_resnet_rcnn

    torch.manual_seed(0)
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common", "models", "faster_rcnn.py")).model
    use_small_resnet_rcnn(cfg, widths=(8, 16, 32, 64), fpn_channels=32, fc_dim=64)
    cfg.roi_heads.num_classes = 3
    cfg.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    cfg.roi_heads.box_predictor._target_ = GHMRFastRCNNOutputLayers
    cfg.roi_heads.box_predictor.box_loss = L(GHMRLoss)(mu=0.02, bins=10, momentum=0.7,
                                                       loss_weight=1.0)
    model = instantiate(cfg)
    model.train()
    with EventStorage():
        losses = model(batch((3,)))
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] > 0
    predictor = model.roi_heads.box_predictor
    assert predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert predictor.box_loss.acc_sum.sum() > 0  # the EMA counts were updated
    model.eval()
    with torch.no_grad():
        out = model(batch((2,)))
    assert out[0]["instances"].pred_boxes.tensor.shape[1] == 4
