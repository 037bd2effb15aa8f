"""VarifocalNet: the head's outputs and star-shaped deformable convolution, the loss targets and
weights against loop references, the training step of every VFNet config, and a short fit."""
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss

from conftest import REPO, synthetic_batch
from hpf.config import use_small_resnet_fpn
from hpf.losses import ProgressiveVarifocalLoss, VarifocalLoss
from hpf.modeling.vfnet import VFNet, VFNetHead, distances_to_boxes, star_offsets

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 3
SIZE = 96
STRIDES = [8, 16, 32, 64, 128]
CONFIGS = ["COCO-Detection/vfnet_R_50_FPN_1x.py", "COCO-Detection/vfnet_hpf_R_50_FPN_1x.py",
           "Shapes/vfnet_R18h_FPN_vfl.py", "Shapes/vfnet_R18h_FPN_hpf.py"]


def tiny_cfg(config="Shapes/vfnet_R18h_FPN_vfl.py"):
    cfg = LazyConfig.load(os.path.join(REPO, "configs", config))
    use_small_resnet_fpn(cfg.model, widths=(8, 16, 32, 64), fpn_channels=64, head_convs=1)
    cfg.model.num_classes = NUM_CLASSES
    return cfg


def tiny_model(config="Shapes/vfnet_R18h_FPN_vfl.py", cls_loss=None):
    cfg = tiny_cfg(config)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    if cls_loss is not None:
        model.cls_loss = cls_loss
    return model


def tiny_head(gradient_mul=0.1):
    torch.manual_seed(0)
    return VFNetHead(input_shape=[ShapeSpec(channels=64)] * 5, num_classes=NUM_CLASSES,
                     conv_dims=[64], strides=STRIDES, box_normalizers=[16, 32, 64, 128, 256],
                     norm="GN", gradient_mul=gradient_mul)


def features(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 64, SIZE // s + 1, SIZE // s + 1, generator=gen) for s in STRIDES]


def test_head_outputs_per_level():
    head = tiny_head()
    feats = features()
    logits, init, refined = head(feats)
    for x, s, i, r in zip(feats, logits, init, refined):
        hw = x.shape[-2:]
        assert s.shape == (2, NUM_CLASSES, *hw)
        assert i.shape == r.shape == (2, 4, *hw)
        assert (i > 0).all() and (r > 0).all()
    # The refinement multiplies the initial box: exp(0 * conv) = 1 leaves it unchanged.
    with torch.no_grad():
        head.refine_scales.zero_()
    _, init, refined = head(feats)
    for i, r in zip(init, refined):
        assert torch.equal(i, r)


def test_star_offsets_hand_value():
    # l, t, r, b = 16, 8, 24, 32 px at stride 8 = 2, 1, 3, 4 cells: sampling rows y = -1, 0, 4
    # and columns x = -2, 0, 3; offset = point - regular grid (i - 1, j - 1).
    box = torch.tensor([16.0, 8.0, 24.0, 32.0]).view(1, 4, 1, 1)
    expected = torch.tensor([
        (0, -1), (0, 0), (0, 2),  # top row: y = -1 on grid row -1
        (0, -1), (0, 0), (0, 2),  # middle row
        (3, -1), (3, 0), (3, 2),  # bottom row: y = 4 on grid row 1
    ], dtype=torch.float32).flatten()
    assert torch.equal(star_offsets(box, 8).flatten(), expected)
    # A box of one stride each way samples the plain 3x3 grid.
    assert torch.equal(star_offsets(torch.full((2, 4, 3, 5), 32.0), 32),
                       torch.zeros(2, 18, 3, 5))
    with pytest.raises(ValueError, match="distances"):
        star_offsets(torch.ones(1, 3, 2, 2), 8)


def test_deformable_convs_sample_the_initial_box():
    head = tiny_head()
    seen = {}
    for name in ("cls_dconv", "bbox_refine_dconv"):
        getattr(head, name).register_forward_hook(
            lambda m, args, out, name=name: seen.setdefault(name, []).append((args, out)))
    feats = features()
    _, init, _ = head(feats)
    assert set(seen) == {"cls_dconv", "bbox_refine_dconv"}
    for level, box in enumerate(init):
        for name in seen:
            (feat, offsets), _ = seen[name][level]
            assert torch.allclose(offsets, star_offsets(box, STRIDES[level]))

    # Initial boxes of one stride each way: zero offsets, the deformable convolution is the
    # plain convolution with its weight.
    with torch.no_grad():
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.copy_(torch.log(torch.tensor(0.5)))  # exp(.) x 16 = 8 on P3
    seen.clear()
    head(feats)
    (feat, offsets), out = seen["cls_dconv"][0]
    assert offsets.abs().max() < 1e-6
    assert torch.allclose(out, F.conv2d(feat, head.cls_dconv.weight, padding=1), atol=1e-5)


def test_offset_gradient_is_scaled_by_gradient_mul():
    # The score depends on the initial box only through the offsets, whose gradient is scaled.
    grads = []
    for g in (1.0, 0.1):
        head = tiny_head(gradient_mul=g)
        logits, _, _ = head(features())
        sum(x.sum() for x in logits).backward()
        grads.append(head.bbox_pred.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], 0.1 * grads[0], rtol=1e-4,
                               atol=1e-6 * grads[0].abs().max().item())


class RecordingVarifocalLoss(VarifocalLoss):
    def forward(self, logits, targets, normalizer, valid=None):
        self.targets = targets
        return super().forward(logits, targets, normalizer, valid)


def test_losses_against_loop_reference():
    """VFL targets = IoU of the detached refined box (assigned class of the positives, 0
    elsewhere); GIoU of each box kind weighted by its own IoU over the IoUs' sum."""
    model = tiny_model(cls_loss=RecordingVarifocalLoss())
    batch = synthetic_batch((4, 2), SIZE, NUM_CLASSES, extent=0.4, min_side=16)
    with EventStorage():
        losses = model(batch)
    targets = torch.cat(model.cls_loss.targets, dim=1)
    assert not targets.requires_grad

    images = model.preprocess_image(batch)
    with torch.no_grad():
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        _, init, refined = model._transpose_dense_predictions(model.head(feats),
                                                              [NUM_CLASSES, 4, 4])
        anchors = model.anchor_generator(feats)
        labels, matched = model.label_anchors(anchors, [b["instances"] for b in batch])
    points = Boxes.cat(anchors).get_centers()
    init, refined = torch.cat(init, 1), torch.cat(refined, 1)
    expected = torch.zeros_like(targets)
    giou = {"init": [0.0, 0.0], "refined": [0.0, 0.0]}  # sum of iou * giou, sum of iou
    num_pos = 0
    for i in range(len(batch)):
        for a in range(len(points)):
            c = labels[i][a].item()
            if c == NUM_CLASSES:
                continue
            num_pos += 1
            gt = Boxes(matched[i][a:a + 1])
            for kind, dist in (("init", init), ("refined", refined)):
                box = distances_to_boxes(points[a:a + 1], dist[i, a:a + 1])
                iou = max(matched_pairwise_iou(Boxes(box), gt).item(), 1e-6)
                giou[kind][0] += iou * giou_loss(box, gt.tensor).item()
                giou[kind][1] += iou
                if kind == "refined":
                    expected[i, a, c] = iou
    assert num_pos > 5
    assert torch.allclose(targets, expected, atol=1e-6)
    assert losses["loss_box_reg"].item() == pytest.approx(1.5 * giou["init"][0] / giou["init"][1],
                                                          rel=1e-4)
    assert losses["loss_box_refine"].item() == pytest.approx(
        2.0 * giou["refined"][0] / giou["refined"][1], rel=1e-4)


def test_no_positives_keep_every_head_parameter_in_the_graph():
    model = tiny_model()
    with EventStorage():
        losses = model(synthetic_batch((0, 0), SIZE, NUM_CLASSES))
    assert losses["loss_box_reg"].item() == losses["loss_box_refine"].item() == 0.0
    sum(losses.values()).backward()
    missing = [n for n, p in model.head.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("config", CONFIGS)
def test_config_training_step(config):
    cfg = tiny_cfg(config)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert isinstance(model, VFNet)
    loss_type = ProgressiveVarifocalLoss if "hpf" in config else VarifocalLoss
    assert type(model.cls_loss) is loss_type
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    if "COCO" in config:  # the reference's paramwise_cfg: bias lr x2, no bias decay
        group = next(g for g in optimizer.param_groups
                     if any(p is model.head.cls_score.bias for p in g["params"]))
        assert group["lr"] == pytest.approx(2 * cfg.optimizer.lr)
        assert group["weight_decay"] == 0.0
    with EventStorage():
        losses = model(synthetic_batch((3, 1), SIZE, NUM_CLASSES, extent=0.4, min_side=16))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_box_refine"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()


def test_shapes_fit_decreases_the_loss():
    model = tiny_model()
    batch = synthetic_batch((3, 2), 64, NUM_CLASSES, extent=0.5, min_side=16, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    totals = []
    with EventStorage() as storage:
        for _ in range(20):
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            storage.step()
            totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.5 * totals[0], totals


def test_mismatched_strides_are_named():
    with pytest.raises(ValueError, match="box_normalizers"):
        VFNetHead(input_shape=[ShapeSpec(channels=64)] * 5, num_classes=NUM_CLASSES,
                  conv_dims=[64], strides=STRIDES, box_normalizers=[16, 32, 64, 128])
    cfg = tiny_cfg()
    cfg.model.head.strides = [8, 16, 32, 64, 256]
    with pytest.raises(ValueError, match="anchor_generator strides"):
        instantiate(cfg.model)
