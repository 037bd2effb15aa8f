"""GFL: the head's outputs, Distribution Focal Loss and the integral decoding against hand values,
the QFL target and the box-loss weights on a hand-built batch, one training step of every GFL
config and a short run whose loss decreases."""
import math
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss
from omegaconf import OmegaConf

from conftest import REPO, synthetic_batch
from hpf.config import use_small_resnet_fpn
from hpf.losses import ProgressiveQualityFocalLoss, QualityFocalLoss
from hpf.losses.distribution_focal import DistributionFocalLoss, distribution_focal_loss
from hpf.modeling.gfl import (
    GFL,
    GFLHead,
    boxes_to_distances,
    distances_to_boxes,
    integral_distances,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 3
CONFIGS = [
    "COCO-Detection/gfl_R_50_FPN_1x.py",
    "COCO-Detection/gfl_hpf_R_50_FPN_1x.py",
    "Shapes/gfl_R18h_FPN_qfl.py",
    "Shapes/gfl_R18h_FPN_hpf.py",
]


def tiny_gfl(config="Shapes/gfl_R18h_FPN_qfl.py", **overrides):
    cfg = LazyConfig.load(os.path.join(REPO, "configs", config)).model
    use_small_resnet_fpn(cfg, widths=(8, 16, 32, 64), fpn_channels=64, head_convs=1)
    cfg.num_classes = NUM_CLASSES
    cfg.update(overrides)
    torch.manual_seed(0)
    return instantiate(cfg)


# --- head ------------------------------------------------------------------------------
def test_head_output_shapes_and_scales():
    head = GFLHead(input_shape=[ShapeSpec(channels=32)] * 3, num_classes=NUM_CLASSES,
                   conv_dims=[32], norm="GN", reg_max=7)
    sizes = [(12, 10), (6, 5), (3, 3)]
    features = [torch.randn(2, 32, h, w) for h, w in sizes]
    logits, dists = head(features)
    assert [tuple(x.shape) for x in logits] == [(2, NUM_CLASSES, h, w) for h, w in sizes]
    assert [tuple(x.shape) for x in dists] == [(2, 4 * 8, h, w) for h, w in sizes]
    # The learnable scale of level 1 multiplies only that level's distribution logits.
    with torch.no_grad():
        head.scales[1] = 3.0
    _, scaled = head(features)
    torch.testing.assert_close(scaled[1], 3 * dists[1])
    torch.testing.assert_close(scaled[0], dists[0])
    with pytest.raises(ValueError, match="reg_max"):
        GFLHead(input_shape=[ShapeSpec(channels=16)], num_classes=1, conv_dims=[16], reg_max=0)


# --- Distribution Focal Loss -----------------------------------------------------------
def test_dfl_hand_value_and_gradient_on_two_bins():
    # Softmax (1/4, 3/4); y = 0.3 -> -(0.7 log 1/4 + 0.3 log 3/4).
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    loss = distribution_focal_loss(logits, torch.tensor([0.3]))
    expected = -(0.7 * math.log(0.25) + 0.3 * math.log(0.75))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # d/dz = softmax - (0.7, 0.3): the left bin is pushed up, the right one down.
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.25 - 0.7, 0.75 - 0.3]]))
    # Minimal (zero gradient) where the softmax equals the two-bin target (0.7, 0.3).
    at_target = torch.tensor([[math.log(0.7), math.log(0.3)]], requires_grad=True)
    distribution_focal_loss(at_target, torch.tensor([0.3])).sum().backward()
    torch.testing.assert_close(at_target.grad, torch.zeros(1, 2), atol=1e-6, rtol=0)


def test_dfl_uses_the_two_bins_around_the_target():
    # Five bins, y = 2.25: only bins 2 and 3 get a negative gradient (0.75 and 0.25 targets).
    logits = torch.zeros(1, 5, requires_grad=True)
    distribution_focal_loss(logits, torch.tensor([2.25])).sum().backward()
    torch.testing.assert_close(logits.grad[0], torch.tensor([0.2, 0.2, 0.2 - 0.75, 0.2 - 0.25,
                                                             0.2]))
    # A target on the last bin is the cross-entropy of that bin alone.
    last = distribution_focal_loss(torch.zeros(1, 5), torch.tensor([4.0]))
    assert last.item() == pytest.approx(math.log(5.0), rel=1e-6)
    # The module: weighted sum.
    module = DistributionFocalLoss(reduction="sum")
    two = module(torch.zeros(2, 5), torch.tensor([4.0, 4.0]), weight=torch.tensor([0.5, 2.0]))
    assert two.item() == pytest.approx(2.5 * math.log(5.0), rel=1e-6)
    with pytest.raises(ValueError, match="targets must lie in"):
        distribution_focal_loss(torch.zeros(1, 5), torch.tensor([4.5]))
    with pytest.raises(ValueError, match="targets has shape"):
        distribution_focal_loss(torch.zeros(2, 5), torch.tensor([1.0]))


# --- integral decoding -----------------------------------------------------------------
def test_integral_decoding_hand_value():
    # Equal mass on bins 2 and 3 of every side: 2.5 strides; at stride 8 from centre (100, 50)
    # that is 20 px on every side.
    logits = torch.zeros(1, 4, 17)
    logits[..., 2:4] = 40.0
    distances = integral_distances(logits.flatten(1))
    torch.testing.assert_close(distances, torch.full((1, 4), 2.5))
    boxes = distances_to_boxes(torch.tensor([[100.0, 50.0]]), distances * 8)
    torch.testing.assert_close(boxes, torch.tensor([[80.0, 30.0, 120.0, 70.0]]))
    torch.testing.assert_close(boxes_to_distances(torch.tensor([[100.0, 50.0]]), boxes),
                               torch.full((1, 4), 20.0))


# --- QFL target and box-loss weights on a hand-built batch -----------------------------
class RecordingQFL(QualityFocalLoss):
    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        self.targets = torch.cat(targets_per_level, dim=1)
        return super().forward(logits_per_level, targets_per_level, normalizer, valid_per_level)


def _peaked(bins_per_side, n=17):
    """Distribution logits peaked (softmax ~1) on the given bin of each side."""
    logits = torch.zeros(4, n)
    logits[torch.arange(4), torch.tensor(bins_per_side)] = 40.0
    return logits.flatten()


def test_quality_target_and_box_weights_on_hand_built_batch():
    model = tiny_gfl()
    model.cls_loss = RecordingQFL(beta=2.0)
    # One level (stride 8), three anchors centred at (16, 16), (48, 16), (80, 16); anchors 0 and
    # 1 are positives of classes 0 and 2, anchor 2 background.
    anchors = [Boxes(torch.tensor([[0.0, 0, 32, 32], [32, 0, 64, 32], [64, 0, 96, 32]]))]
    gt_labels = [torch.tensor([0, 2, NUM_CLASSES])]
    gt_boxes = [torch.tensor([[8.0, 8, 32, 24], [40, 0, 56, 32], [0, 0, 0, 0]])]
    # Predicted distances in strides: anchor 0 (1, 1, 1, 1) -> [8, 8, 24, 24];
    # anchor 1 (1, 2, 1, 2) -> [40, 0, 56, 32], the ground truth itself.
    pred_dists = [torch.stack([_peaked([1, 1, 1, 1]), _peaked([1, 2, 1, 2]),
                               _peaked([0, 0, 0, 0])])[None].requires_grad_()]
    scores = torch.tensor([[0.2, 0.6, 0.1], [0.3, 0.1, 0.9], [0.5, 0.5, 0.5]])
    pred_logits = [torch.logit(scores)[None].requires_grad_()]
    with EventStorage():
        losses = model.losses(anchors, pred_logits, gt_labels, pred_dists, gt_boxes)
    # The target is computed from the detached box: QFL sends no gradient to the box branch.
    losses["loss_cls"].backward(retain_graph=True)
    assert pred_dists[0].grad is None and pred_logits[0].grad.abs().sum() > 0

    # QFL target: IoU of the predicted box with its ground truth (256 / 384 and 1), on the
    # positive's class only.
    expected = torch.zeros(1, 3, NUM_CLASSES)
    expected[0, 0, 0] = 256 / 384
    expected[0, 1, 2] = 1.0
    torch.testing.assert_close(model.cls_loss.targets, expected)

    # GIoU and DFL weights: the best class score of each positive (0.6, 0.9), whatever its
    # class; normalised by their sum (1.5).
    w = torch.tensor([0.6, 0.9])
    pred_boxes = torch.tensor([[8.0, 8, 24, 24], [40, 0, 56, 32]])
    giou = giou_loss(pred_boxes, gt_boxes[0][:2], reduction="none")
    assert giou[0].item() == pytest.approx(1 / 3, rel=1e-5) and giou[1].item() < 1e-5
    assert losses["loss_box_reg"].item() == pytest.approx(2.0 * (w * giou).sum().item() / 1.5,
                                                          rel=1e-5)
    # DFL targets: distances of the ground truth in strides, (1, 1, 2, 1) and (1, 2, 1, 2).
    targets = torch.tensor([[1.0, 1, 2, 1], [1, 2, 1, 2]])
    dfl = distribution_focal_loss(pred_dists[0][0, :2].detach().reshape(-1, 17),
                                  targets.flatten()).view(2, 4)
    assert dfl[0, 2] > 30 and dfl[1].max() < 1e-6  # the wrong side of anchor 0 costs
    expected_dfl = 0.25 * (w[:, None] * dfl).sum() / 4 / 1.5
    assert losses["loss_dfl"].item() == pytest.approx(expected_dfl.item(), rel=1e-5)

    # Changing a non-maximal class score changes no weight; below a total weight of 1 the
    # normaliser is 1.
    scores2 = scores.clone()
    scores2[0, 0], scores2[1, 2] = 0.05, 0.1  # weights now 0.6 (class 1) and 0.3 (class 0)
    with EventStorage():
        losses2 = model.losses(anchors, [torch.logit(scores2)[None]], gt_labels, pred_dists,
                               gt_boxes)
    w2 = torch.tensor([0.6, 0.3])
    assert losses2["loss_box_reg"].item() == pytest.approx(2.0 * (w2 * giou).sum().item(),
                                                           rel=1e-5)


def test_dfl_targets_are_clamped_inside_the_bins():
    # A ground truth reaching 20 strides right of the anchor centre: the DFL target is 15.9
    # (the last bin 16 minus 0.1), i.e. the two-bin target (0.1, 0.9) on bins 15 and 16.
    model = tiny_gfl()
    anchors = [Boxes(torch.tensor([[0.0, 0, 32, 32]]))]
    gt_boxes = [torch.tensor([[8.0, 8, 16 + 8 * 20, 24]])]  # (1, 1, 20, 1) strides
    pred = _peaked([1, 1, 15, 1]).view(4, 17)
    pred[2, 15:] = 40.0 + torch.tensor([0.1, 0.9]).log()  # softmax ~(0.1, 0.9) on bins 15, 16
    with EventStorage():
        losses = model.losses(anchors, [torch.full((1, 1, NUM_CLASSES), 5.0)],
                              [torch.tensor([0])], [pred.reshape(1, 1, -1)], gt_boxes)
    # The right side costs the entropy of (0.1, 0.9), the other sides ~0; one positive of
    # weight sigma(5) < 1, so the normaliser is 1.
    right = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    weight = torch.sigmoid(torch.tensor(5.0)).item()
    assert losses["loss_dfl"].item() == pytest.approx(0.25 * weight * right / 4, rel=1e-4)


def test_inference_decodes_clips_and_drops_non_finite_boxes():
    model = tiny_gfl()
    # Two levels of one anchor each: stride 8 at (16, 16), stride 16 at (40, 40).
    anchors = [Boxes(torch.tensor([[0.0, 0, 32, 32]])), Boxes(torch.tensor([[8.0, 8, 72, 72]]))]
    logits = [torch.logit(torch.tensor([[0.9, 0.02, 0.01]])),
              torch.logit(torch.tensor([[0.01, 0.7, 0.01]]))]
    dists = [_peaked([1, 2, 3, 1])[None], _peaked([1, 1, 4, 1])[None]]
    result = model.inference_single_image(anchors, logits, dists, (48, 64))
    # (16 - 8, 16 - 16, 16 + 24, 16 + 8); (40 - 16, 40 - 16, 40 + 64 -> 64, 40 + 16 -> 48).
    torch.testing.assert_close(result.pred_boxes.tensor,
                               torch.tensor([[8.0, 0, 40, 24], [24, 24, 64, 48]]))
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.7]))
    assert result.pred_classes.tolist() == [0, 1]
    dists[0] = torch.full_like(dists[0], float("nan"))
    result = model.inference_single_image(anchors, logits, dists, (48, 64))
    assert result.pred_classes.tolist() == [1]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dfl_target_margin"):
        tiny_gfl(dfl_target_margin=-0.1)
    with pytest.raises(TypeError, match="GFLHead"):
        tiny_gfl(head=L(RetinaNetHead)(input_shape=[ShapeSpec(channels=64)] * 5,
                                       num_classes=NUM_CLASSES, num_anchors=1, conv_dims=[64]))


# --- configs and training --------------------------------------------------------------
def _load(config):
    return LazyConfig.load(os.path.join(REPO, "configs", config))


def _model_without_loss(cfg):
    model = OmegaConf.to_container(cfg.model, resolve=False)
    model.pop("cls_loss")
    return model


@pytest.mark.parametrize("baseline,hpf", [CONFIGS[:2], CONFIGS[2:]])
def test_hpf_configs_change_only_the_classification_loss(baseline, hpf):
    base, progressive = _load(baseline), _load(hpf)
    assert base.model.cls_loss._target_ is QualityFocalLoss and base.model.cls_loss.beta == 2.0
    loss = progressive.model.cls_loss
    assert loss._target_ is ProgressiveQualityFocalLoss
    assert (loss.gamma, loss.delta, loss.w, loss.loss_weight, loss.sampling) == (
        2.0, 0.5, 1.0, 2.0, "level")
    assert _model_without_loss(base) == _model_without_loss(progressive)
    assert base.optimizer == progressive.optimizer
    assert base.train.max_iter == progressive.train.max_iter


def test_coco_config_has_the_reference_settings():
    cfg = _load(CONFIGS[0])
    model = cfg.model
    assert (model.head.reg_max, len(model.head.conv_dims), model.head.norm) == (16, 4, "GN")
    assert (model.box_loss_weight, model.dfl_loss_weight, model.dfl_target_margin) == (
        2.0, 0.25, 0.1)
    assert model.anchor_matcher.topk == 9 and model.anchor_generator.offset == 0.0
    assert [s[0] / t for s, t in zip(model.anchor_generator.sizes,
                                     model.anchor_generator.strides)] == [8.0] * 5
    assert (model.test_score_thresh, model.test_nms_thresh, model.test_topk_candidates,
            model.max_detections_per_image) == (0.05, 0.6, 1000, 100)
    assert model.loss_normalizer == "mean" and model.input_format == "RGB"
    assert cfg.optimizer.lr == 0.01 and cfg.train.max_iter == 90000 and cfg.train.init_checkpoint


@pytest.mark.parametrize("config", CONFIGS)
def test_one_training_step_of_each_config(config):
    model = tiny_gfl(config)
    assert isinstance(model, GFL) and model.reg_max == 16
    model.train()
    with EventStorage():
        losses = model(synthetic_batch((3, 1), 96, NUM_CLASSES))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_dfl"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    head = model.head
    for p in (head.cls_score.weight, head.bbox_pred.weight, head.scales):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_short_run_decreases_the_loss():
    """25 AdamW steps on a fixed batch. The first steps may raise the loss: the box losses'
    weights (class scores) start at the prior and grow, and so do QFL's IoU targets."""
    model = tiny_gfl()
    model.train()
    data = synthetic_batch((4, 4), 64, NUM_CLASSES, seed=1, extent=0.4, min_side=12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    totals = []
    with EventStorage():
        for _ in range(25):
            losses = model(data)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.7 * sum(totals[:3]) / 3, totals
