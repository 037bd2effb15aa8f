"""Sampling-Free Faster / Cascade / Mask R-CNN: forward + backward + inference of every
variant, empty and all-background images, the RoI heads training on all proposals, guided
scaling at the loss-dict level, per-stage logs, the RPN's "auto" prior and the RoI heads'
adaptive threshold."""
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO, synthetic_batch
from hpf.config import use_sampling_free_roi_heads, use_sampling_free_rpn, use_small_resnet_rcnn
from hpf.losses import GuidedLossScale, prior_bias
from hpf.modeling.priors import count_foreground_anchors, initialize_auto_priors

NUM_CLASSES = 3
# (architecture, Sampling-Free RPN, Sampling-Free RoI heads)
VARIANTS = {
    "faster": ("faster_rcnn", False, False),
    "faster_sf_rpn": ("faster_rcnn", True, False),
    "faster_sf_roi": ("faster_rcnn", False, True),
    "faster_sf": ("faster_rcnn", True, True),
    "cascade": ("cascade_rcnn", False, False),
    "cascade_sf": ("cascade_rcnn", True, True),
    "mask": ("mask_rcnn", False, False),
    "mask_sf": ("mask_rcnn", True, True),
}


def tiny_rcnn_cfg(variant, rpn_prior=0.01, test_score_thresh=1e-3, rpn_guided_factor=None):
    arch, sf_rpn, sf_roi = VARIANTS[variant]
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common", "models", arch + ".py")).model
    use_small_resnet_rcnn(cfg, widths=(8, 16, 32, 64), fpn_channels=32, fc_dim=64)
    cfg.roi_heads.num_classes = NUM_CLASSES
    cfg.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    if sf_rpn:
        # None: the helper's own default (the paper's 1)
        extra = {} if rpn_guided_factor is None else {"guided_factor": rpn_guided_factor}
        use_sampling_free_rpn(cfg, prior_prob=rpn_prior, **extra)
    if sf_roi:
        use_sampling_free_roi_heads(cfg, test_score_thresh=test_score_thresh, smooth_l1_beta=1.0)
    return cfg


def batch(num_boxes=(3, 0), size=128, seed=0):
    return synthetic_batch(num_boxes, size, NUM_CLASSES, seed=seed, spread=0.6, extent=0.35,
                           min_side=12, masks=True)


def train_step(model, data):
    model.train()
    with EventStorage() as storage:
        losses = model(data)
        sum(losses.values()).backward()
        logged = {k: v[0] for k, v in storage.latest().items()}
    return losses, logged


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_boxes", [(3, 1), (0, 0)], ids=["instances", "empty"])
def test_forward_backward_and_inference(variant, num_boxes):
    torch.manual_seed(0)
    model = instantiate(tiny_rcnn_cfg(variant))
    losses, logged = train_step(model, batch(num_boxes))
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    if VARIANTS[variant][0] == "mask_rcnn" and sum(num_boxes):
        assert "loss_mask" in losses
    # Gradients reach the RPN objectness and every box predictor.
    assert model.proposal_generator.rpn_head.objectness_logits.weight.grad is not None
    predictors = getattr(model.roi_heads, "box_predictor")
    predictors = predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    for predictor in predictors:
        assert torch.isfinite(predictor.cls_score.weight.grad).all()
    model.eval()
    with torch.no_grad():
        outputs = model(batch(num_boxes))
    assert len(outputs) == len(num_boxes)
    for out in outputs:
        inst = out["instances"]
        assert inst.pred_boxes.tensor.shape[1] == 4 and len(inst) <= 100
        if VARIANTS[variant][0] == "mask_rcnn":
            assert inst.has("pred_masks")


@pytest.mark.parametrize("variant", ["faster_sf", "cascade_sf"])
def test_all_background_proposals(variant):
    """Proposals that all miss the ground truth (GT not appended): no box loss, so the guided
    classification loss is 0 too (the ratio is 0), and everything stays finite."""
    torch.manual_seed(0)
    cfg = tiny_rcnn_cfg(variant)
    cfg.roi_heads.proposal_append_gt = False
    model = instantiate(cfg)
    model.train()
    data = batch((1,))
    images = model.preprocess_image(data)
    features = model.backbone(images.tensor)
    targets = [Instances((128, 128), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]])),
                         gt_classes=torch.tensor([1]))]
    proposals = Instances((128, 128))
    proposals.proposal_boxes = Boxes(torch.tensor([[60.0, 60.0, 120.0, 120.0],
                                                   [80.0, 30.0, 127.0, 90.0]]))
    proposals.objectness_logits = torch.zeros(2)
    with EventStorage() as storage:
        _, losses = model.roi_heads(images, features, [proposals], targets)
        logged = {k: v[0] for k, v in storage.latest().items()}
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() == 0.0, (name, value)
    sum(losses.values()).backward()
    prefix = "stage0/" if variant == "cascade_sf" else ""
    assert logged[prefix + "roi_head/num_fg"] == 0 and logged[prefix + "roi_head/num_rois"] == 2


@pytest.mark.parametrize("arch", ["faster", "cascade"])
def test_roi_heads_train_on_all_proposals(arch):
    """The baseline trains its RoI heads on 512 sampled proposals per image; Sampling-Free on
    every proposal plus the ground truth (counted through the logged statistics)."""
    data = batch((3, 2), size=256)
    counts = {}
    for variant in (arch, arch + "_sf"):
        torch.manual_seed(0)
        model = instantiate(tiny_rcnn_cfg(variant))
        proposals = []
        model.proposal_generator.register_forward_hook(
            lambda module, inputs, output: proposals.extend(len(p) for p in output[0])
        )
        _, logged = train_step(model, data)
        counts[variant] = (logged, sum(proposals) / len(data))
    baseline, num_proposals = counts[arch]
    assert num_proposals > 512  # more proposals than the baseline's sample
    assert baseline["roi_head/num_fg_samples"] + baseline["roi_head/num_bg_samples"] == 512
    sf, num_proposals = counts[arch + "_sf"]
    prefix = "stage0/" if arch == "cascade" else ""
    num_gt = (3 + 2) / len(data)
    assert sf[prefix + "roi_head/num_rois"] == pytest.approx(num_proposals + num_gt)
    assert sf["roi_head/num_fg_samples"] + sf["roi_head/num_bg_samples"] == pytest.approx(
        num_proposals + num_gt)
    # The RPN trains on every labelled anchor, not 256.
    assert sf["rpn/num_pos_anchors"] + sf["rpn/num_neg_anchors"] > 256
    assert baseline["rpn/num_pos_anchors"] + baseline["rpn/num_neg_anchors"] == 256


@pytest.mark.parametrize("keep_rpn,keep_roi", [(True, False), (False, True), (True, True)])
def test_hybrid_keeps_sampling_and_adds_guided_scaling(keep_rpn, keep_roi):
    """The paper's Table 4 hybrids: sampling and guided scaling are independent switches. Where
    sampling is kept, the head trains on detectron2's sampled batch (256 anchors / 512 RoIs per
    image) and its classification loss is still guided to its box loss."""
    from detectron2.modeling.roi_heads import StandardROIHeads

    cfg = tiny_rcnn_cfg("faster")
    use_sampling_free_rpn(cfg, prior_prob=0.01, keep_sampling=keep_rpn)
    use_sampling_free_roi_heads(cfg, smooth_l1_beta=1.0, keep_sampling=keep_roi)
    torch.manual_seed(0)
    model = instantiate(cfg)
    assert (type(model.roi_heads) is StandardROIHeads) == keep_roi
    data = batch((3, 2), size=256)
    losses, logged = train_step(model, data)
    rpn_anchors = logged["rpn/num_pos_anchors"] + logged["rpn/num_neg_anchors"]
    assert (rpn_anchors == 256) == keep_rpn
    roi_samples = logged["roi_head/num_fg_samples"] + logged["roi_head/num_bg_samples"]
    assert (roi_samples == 512) == keep_roi
    assert losses["loss_cls"].item() == pytest.approx(2 * losses["loss_box_reg"].item(), rel=1e-5)
    assert losses["loss_rpn_cls"].item() == pytest.approx(losses["loss_rpn_loc"].item(), rel=1e-5)


def test_guided_scaling_switched_off_leaves_the_ce_unscaled():
    cfg = tiny_rcnn_cfg("faster")
    use_sampling_free_rpn(cfg, prior_prob=0.01, guided_scaling=False)
    use_sampling_free_roi_heads(cfg, smooth_l1_beta=1.0, guided_scaling=False)
    model = instantiate(cfg)
    assert model.proposal_generator.loss_balance is None
    assert model.roi_heads.box_predictor.loss_balance is None
    losses, logged = train_step(model, batch((3, 1)))
    assert "rpn/guided_ratio" not in logged and "roi_head/guided_ratio" not in logged
    assert losses["loss_cls"].item() != pytest.approx(2 * losses["loss_box_reg"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="cascade_guided_scaling='joint' needs"):
        use_sampling_free_roi_heads(tiny_rcnn_cfg("cascade"), cascade_guided_scaling="joint",
                                    keep_sampling=True)
    # One weight for all stages: a learned form has no single weight to share.
    cfg = tiny_rcnn_cfg("cascade")
    use_sampling_free_roi_heads(cfg, cascade_guided_scaling="joint")
    cfg.roi_heads.joint_loss_balance = GuidedLossScale(mode="learned_scale")
    with pytest.raises(ValueError, match="joint_loss_balance must have mode 'plain' or 'constant'"):
        instantiate(cfg)


@pytest.mark.parametrize("rpn_factor", [None, 3.0])  # the helper's default (1); an ablation's
def test_guided_scaling_at_the_loss_dict_level(rpn_factor):
    cfg = tiny_rcnn_cfg("faster_sf", rpn_guided_factor=rpn_factor)
    torch.manual_seed(0)
    losses, logged = train_step(instantiate(cfg), batch((3, 1)))
    assert losses["loss_box_reg"] > 0 and losses["loss_rpn_loc"] > 0
    # RoI heads: factor 2 (conference paper Sec. 3.4); RPN: factor 1 unless set.
    assert losses["loss_cls"].item() == pytest.approx(2 * losses["loss_box_reg"].item(), rel=1e-5)
    expected_rpn_cls = (rpn_factor or 1.0) * losses["loss_rpn_loc"].item()
    assert losses["loss_rpn_cls"].item() == pytest.approx(expected_rpn_cls, rel=1e-5)
    assert logged["roi_head/guided_ratio"] > 0 and logged["rpn/guided_ratio"] > 0


# One anchor per location whose side is the stride (P2-P6, strides 4-64, centres at multiples
# of the stride): the anchors of a level tile the image. On a 64x64 image that is
# 16x16 + 8x8 + 4x4 + 2x2 + 1 = 341 anchors. A box equal to an anchor is its only match (IoU 1):
# every other anchor overlaps it by IoU <= 0.25, below the RPN's 0.3, so none is ignored.
RPN_ANCHORS_PER_IMAGE = 341


def hand_countable_rpn_cfg(rpn_prior=0.01):
    cfg = tiny_rcnn_cfg("faster_sf", rpn_prior=rpn_prior)
    cfg.proposal_generator.anchor_generator.sizes = [[4], [8], [16], [32], [64]]
    cfg.proposal_generator.anchor_generator.aspect_ratios = [1.0]
    cfg.proposal_generator.head.num_anchors = 1
    return cfg


def image_with_boxes(boxes, size=64):
    inst = Instances((size, size), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     gt_classes=torch.ones(len(boxes), dtype=torch.long))
    return {"image": torch.zeros(3, size, size), "instances": inst, "height": size, "width": size}


def test_rpn_box_loss_is_half_the_mean_over_positive_coordinates():
    """The official Sampling-Free RPN: 0.5 x mean over the positive anchors' coordinates, not
    detectron2's sum / (batch_size_per_image x images) ("batch", kept as an option). One
    positive anchor, the P3 anchor at (24, 24) = its ground truth: its regression target is 0,
    so the (L1) box loss is the sum of its 4 predicted deltas' absolute values / 4 (or / 256)."""
    data = [image_with_boxes([[20, 20, 28, 28]])]
    for normalizer, weight, denominator in (("batch", 1.0, 256), ("foreground", 0.5, 4)):
        cfg = hand_countable_rpn_cfg()
        cfg.proposal_generator.box_reg_normalizer = normalizer
        cfg.proposal_generator.loss_weight = {"loss_rpn_cls": 1.0, "loss_rpn_loc": weight}
        torch.manual_seed(0)
        model = instantiate(cfg)
        outputs = []
        model.proposal_generator.rpn_head.register_forward_hook(
            lambda module, inputs, output: outputs.append(output))
        losses, logged = train_step(model, data)
        deltas = outputs[0][1][1][0, :, 3, 3]  # P3 (2nd level), row 24 / 8, column 24 / 8
        assert logged["rpn/num_pos_anchors"] == 1
        expected = weight * deltas.abs().sum().item() / denominator
        assert losses["loss_rpn_loc"].item() == pytest.approx(expected, rel=1e-5)
        # guided scaling (factor 1): the objectness loss is scaled to the box loss's value
        assert losses["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-5)
    cfg = tiny_rcnn_cfg("faster_sf")
    assert cfg.proposal_generator.box_reg_normalizer == "foreground"
    assert cfg.proposal_generator.loss_weight["loss_rpn_loc"] == 0.5


@pytest.mark.parametrize("guided_factor", [None, 4.0])
def test_cascade_stages_each_guided_by_their_own_box_loss(guided_factor):
    cfg = tiny_rcnn_cfg("cascade_sf")
    if guided_factor is not None:  # an ablation's factor reaches every stage
        use_sampling_free_roi_heads(cfg, guided_factor=guided_factor)
    torch.manual_seed(0)
    losses, logged = train_step(instantiate(cfg), batch((3, 1)))
    factor = 2.0 if guided_factor is None else guided_factor
    ratios = []
    for k in range(3):
        cls, box = losses[f"loss_cls_stage{k}"].item(), losses[f"loss_box_reg_stage{k}"].item()
        assert box > 0 and cls == pytest.approx(factor * box, rel=1e-5), k
        ratios.append(logged[f"stage{k}/roi_head/guided_ratio"])
        assert logged[f"stage{k}/roi_head/num_rois"] >= logged[f"stage{k}/roi_head/num_fg"]
    assert len(set(ratios)) == 3 and min(ratios) > 0  # one ratio per stage


def test_cascade_joint_guided_scaling_one_ratio_for_all_stages():
    """cascade_guided_scaling="joint": every stage's CE times one ratio, factor x the summed box
    losses over the summed CE; the same weights and data give the per-stage run's raw CE."""
    data = batch((3, 1))
    per_stage, joint = tiny_rcnn_cfg("cascade_sf"), tiny_rcnn_cfg("cascade_sf")
    use_sampling_free_roi_heads(joint, cascade_guided_scaling="joint")
    torch.manual_seed(0)
    per_stage_model = instantiate(per_stage)
    joint_model = instantiate(joint)
    missing, unexpected = joint_model.load_state_dict(per_stage_model.state_dict(), strict=False)
    # Only the ratios' buffers differ: one joint instead of one per stage.
    assert missing and all(k.startswith("roi_heads.joint_loss_balance.") for k in missing)
    assert unexpected and all(".loss_balance." in k for k in unexpected)
    ref, ref_logged = train_step(per_stage_model, data)
    losses, logged = train_step(joint_model, data)
    # The raw CE of stage k: its per-stage scaled value 2 x box_k over 2 x its logged ratio.
    raw_cls = [ref[f"loss_box_reg_stage{k}"].item() / ref_logged[f"stage{k}/roi_head/guided_ratio"]
               for k in range(3)]
    boxes = [losses[f"loss_box_reg_stage{k}"].item() for k in range(3)]
    assert boxes == pytest.approx([ref[f"loss_box_reg_stage{k}"].item() for k in range(3)])
    ratio = sum(boxes) / sum(raw_cls)
    assert logged["roi_head/guided_ratio"] == pytest.approx(ratio, rel=1e-5)
    for k in range(3):
        assert losses[f"loss_cls_stage{k}"].item() == pytest.approx(2 * ratio * raw_cls[k], rel=1e-5)
        assert f"stage{k}/roi_head/guided_ratio" not in logged
        assert logged[f"stage{k}/roi_head/num_rois"] > 0
    total_cls = sum(losses[f"loss_cls_stage{k}"].item() for k in range(3))
    assert total_cls == pytest.approx(2 * sum(boxes), rel=1e-5)
    # Not each stage at 2 x its own box loss any more (that is the per-stage reading).
    assert losses["loss_cls_stage0"].item() != pytest.approx(2 * boxes[0], rel=1e-3)


def test_cascade_guided_scaling_misconfigured():
    with pytest.raises(ValueError, match="cascade_guided_scaling must be"):
        use_sampling_free_roi_heads(tiny_rcnn_cfg("cascade"), cascade_guided_scaling="shared")
    with pytest.raises(ValueError, match="needs a Cascade R-CNN"):
        use_sampling_free_roi_heads(tiny_rcnn_cfg("faster"), cascade_guided_scaling="joint")
    # A joint ratio on top of the predictors' own would scale the CE twice.
    cfg = tiny_rcnn_cfg("cascade_sf")
    use_sampling_free_roi_heads(cfg, cascade_guided_scaling="joint")
    cfg.roi_heads.box_predictors[1].scale_classification = True
    cfg.roi_heads.box_predictors[1].loss_balance = None
    with pytest.raises(ValueError, match=r"box_predictors\[1\].scale_classification=True.*twice"):
        instantiate(cfg)
    cfg = tiny_rcnn_cfg("cascade_sf")
    cfg.roi_heads.box_predictors[2].loss_balance = GuidedLossScale(2.0)
    cfg.roi_heads.box_predictors[2].scale_classification = False
    with pytest.raises(ValueError, match="loss_balance is unused"):
        instantiate(cfg)


def test_rpn_auto_prior_from_the_training_data(tmp_path):
    """pi = N_f / N (one class), counted by hand: a batch of one 64x64 image with the P3 anchor
    at (24, 24) as its box, then one with the P4 and P5 anchors at (32, 32) as boxes (each
    overlaps the other's anchor by IoU 0.25): N_f = 1 + 2 of N = 2 x 341 anchors."""
    torch.manual_seed(0)
    model = instantiate(hand_countable_rpn_cfg(rpn_prior="auto"))
    rpn = model.proposal_generator
    data = [[image_with_boxes([[20, 20, 28, 28]])],
            [image_with_boxes([[24, 24, 40, 40], [16, 16, 48, 48]])]]
    n_f, n = 3, 2 * RPN_ANCHORS_PER_IMAGE
    assert count_foreground_anchors(model, data, num_images=2, module=rpn) == (n_f, n)
    assert count_foreground_anchors(model, data, num_images=1, module=rpn) == (
        1, RPN_ANCHORS_PER_IMAGE)
    record = initialize_auto_priors(model, data, num_images=2, output_dir=str(tmp_path))
    pi = n_f / n
    assert record["module"] == "proposal_generator" and record["prior_prob"] == pytest.approx(pi)
    assert record["num_foreground_anchors"] == n_f and record["num_anchors"] == n
    bias = rpn.rpn_head.objectness_logits.bias
    assert prior_bias(pi) == pytest.approx(math.log(pi / (1 - pi)))
    assert torch.allclose(bias, torch.full_like(bias, math.log(pi / (1 - pi))))
    assert (tmp_path / "foreground_stats.json").is_file()
    _, logged = train_step(model, data[0])
    assert logged["rpn/prior_prob"] == pytest.approx(pi)
    fresh = instantiate(hand_countable_rpn_cfg(rpn_prior="auto"))
    fresh.load_state_dict(model.state_dict())
    assert fresh.proposal_generator.foreground_stats.tolist() == [n_f, n]


def test_explicit_rpn_prior_and_no_stats_needed():
    model = instantiate(tiny_rcnn_cfg("faster_sf", rpn_prior=1e-3))
    bias = model.proposal_generator.rpn_head.objectness_logits.bias
    assert torch.allclose(bias, torch.full_like(bias, prior_bias(1e-3)))
    assert initialize_auto_priors(model, [batch()], num_images=1) is None


def test_roi_adaptive_threshold_from_training_statistics():
    torch.manual_seed(0)
    model = instantiate(tiny_rcnn_cfg("faster_sf", test_score_thresh="auto"))
    predictor = model.roi_heads.box_predictor
    model.eval()
    with pytest.raises(RuntimeError, match="test_score_thresh='auto' needs"), torch.no_grad():
        model(batch())
    fg = total = 0
    for seed in range(2):
        _, logged = train_step(model, batch((3, 1), seed=seed))
        fg += logged["roi_head/num_fg"] * 2
        total += logged["roi_head/num_rois"] * 2
    assert predictor.test_score_thresh == pytest.approx(fg / total)
    model.eval()
    with torch.no_grad():
        model(batch())
    fresh = instantiate(tiny_rcnn_cfg("faster_sf", test_score_thresh="auto"))
    fresh.load_state_dict(model.state_dict())
    assert fresh.roi_heads.box_predictor.test_score_thresh == pytest.approx(fg / total)


def test_bad_arguments_are_named():
    cfg = tiny_rcnn_cfg("faster_sf")
    cfg.roi_heads.box_predictor.box_reg_normalizer = "anchors"
    with pytest.raises(ValueError, match="box_reg_normalizer"):
        instantiate(cfg)
    cfg = tiny_rcnn_cfg("faster_sf")
    cfg.proposal_generator.box_reg_normalizer = "rois"
    with pytest.raises(ValueError, match="box_reg_normalizer must be 'foreground' or 'batch'"):
        instantiate(cfg)
    for prior in (1.5, "atuo"):
        with pytest.raises(ValueError, match="prior_prob"):
            instantiate(tiny_rcnn_cfg("faster_sf", rpn_prior=prior))
    with pytest.raises(ValueError, match="test_score_thresh"):
        instantiate(tiny_rcnn_cfg("faster_sf", test_score_thresh="adaptive"))
    cfg = tiny_rcnn_cfg("faster_sf")
    assert instantiate(cfg).roi_heads.box_predictor.smooth_l1_beta == 1.0
    cfg.roi_heads.box_predictor.smooth_l1_beta = -1.0
    with pytest.raises(ValueError, match="smooth_l1_beta must be >= 0, got -1.0"):
        instantiate(cfg)


def fixed_proposals(data, num_random=200, seed=0):
    """Jittered ground-truth boxes plus random boxes, the same at every step."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x in data:
        gt = x["instances"].gt_boxes.tensor
        size = x["image"].shape[-1]
        jittered = (gt.repeat(8, 1) + torch.randn(8 * len(gt), 4, generator=gen) * 4).clamp(0, size - 1)
        xy = torch.rand(num_random, 2, generator=gen) * size * 0.7
        random = torch.cat([xy, (xy + torch.rand(num_random, 2, generator=gen) * size * 0.3 + 4)
                            .clamp(max=size - 1)], 1)
        boxes = torch.cat([jittered, random])
        inst = Instances((size, size), proposal_boxes=Boxes(boxes),
                         objectness_logits=torch.zeros(len(boxes)))
        out.append(inst)
    return out


@pytest.mark.parametrize("variant", ["faster", "faster_sf", "cascade", "cascade_sf"])
def test_loss_decreases_when_fitting_one_batch(variant):
    """A short training run: AdamW steps on one batch lower the total loss. The RoI heads get
    fixed proposals: with guided scaling the loss values are (factor x) box losses averaged
    over the foreground RoIs, and with the RPN's own proposals that foreground set changes
    from step to step (at first only the appended ground truth, whose box targets are 0),
    which moves the loss by itself. The Sampling-Free totals fall more slowly than the
    baselines' (their value is the box losses alone, which a from-scratch head learns
    slowly): 40 steps, 10 %."""
    torch.manual_seed(0)
    model = instantiate(tiny_rcnn_cfg(variant))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    data = batch((4, 2))
    proposals = fixed_proposals(data)
    targets = [x["instances"] for x in data]
    totals = []
    with EventStorage() as storage:
        for i in range(40):
            storage.iter = i
            images = model.preprocess_image(data)
            features = model.backbone(images.tensor)
            _, rpn_losses = model.proposal_generator(images, features, targets)
            _, roi_losses = model.roi_heads(images, features, proposals, targets)
            loss = sum(rpn_losses.values()) + sum(roi_losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.9 * sum(totals[:3]) / 3, totals
