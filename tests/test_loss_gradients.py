"""tools/analysis/loss_gradients.py: the gradient norm of every loss term on every part of an
R-CNN."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO, load_tool

loss_gradients = load_tool("tools/analysis/loss_gradients.py")

FASTER = os.path.join(REPO, "configs", "Shapes", "faster_rcnn_R18h_FPN.py")


def test_parts_of_faster_and_cascade_parameters():
    part_of = loss_gradients.part_of
    assert part_of("backbone.bottom_up.stem.conv1.weight") == "backbone"
    assert part_of("backbone.fpn_lateral2.weight") == "fpn"
    assert part_of("proposal_generator.rpn_head.conv.weight") == "rpn head"
    assert part_of("roi_heads.box_head.fc1.weight") == "box head"
    assert part_of("roi_heads.box_predictor.cls_score.bias") == "classifier"
    assert part_of("roi_heads.box_predictor.bbox_pred.weight") == "box regressor"
    assert part_of("roi_heads.box_head.2.fc2.weight") == "box head 2"
    assert part_of("roi_heads.box_predictor.1.cls_score.weight") == "classifier 1"
    assert part_of("roi_heads.box_predictor.0.bbox_pred.bias") == "box regressor 0"
    assert part_of("roi_heads.mask_head.mask_fcn1.weight") == "roi_heads.mask_head"


def faster_rcnn_and_batch():
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(FASTER).model).train()
    instances = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 12, 60, 70],
                                                                  [70, 20, 120, 90]])),
                          gt_classes=torch.tensor([1, 3]))
    batch = [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8),
              "height": 96, "width": 128, "instances": instances}]
    return model, batch


def test_each_loss_reaches_only_its_parts_and_norms_match_a_backward_pass():
    model, batch = faster_rcnn_and_batch()
    torch.manual_seed(5)  # the RPN and RoI samplers draw the same anchors and proposals below
    norms = loss_gradients.gradient_norms(model, batch)
    assert set(norms) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    roi_parts = ("box head", "classifier", "box regressor")
    for loss in ("loss_rpn_cls", "loss_rpn_loc"):
        assert all(norms[loss][part] == 0 for part in roi_parts)
        assert norms[loss]["rpn head"] > 0 and norms[loss]["backbone"] > 0
    assert norms["loss_cls"]["box regressor"] == 0 and norms["loss_cls"]["rpn head"] == 0
    assert norms["loss_box_reg"]["classifier"] == 0 and norms["loss_box_reg"]["rpn head"] == 0
    for loss in ("loss_cls", "loss_box_reg"):
        assert norms[loss]["box head"] > 0 and norms[loss]["fpn"] > 0

    # The same batch, one plain backward pass of loss_box_reg.
    model.zero_grad()
    torch.manual_seed(5)
    with EventStorage():
        model(batch)["loss_box_reg"].backward()
    expected = {
        part: torch.stack([p.grad.pow(2).sum() for name, p in model.named_parameters()
                           if loss_gradients.part_of(name) == part and p.grad is not None]
                          ).sum().sqrt().item()
        for part in ("box regressor", "box head", "backbone")
    }
    for part, value in expected.items():
        assert norms["loss_box_reg"][part] == pytest.approx(value, rel=1e-5)


def test_roi_statistics_count_the_sampled_or_all_rois_and_their_foreground_ious():
    model, batch = faster_rcnn_and_batch()

    def roi_stats_of_a_training_forward():
        torch.manual_seed(5)
        with loss_gradients.recording_rois(model) as rois:
            loss_gradients.gradient_norms(model, batch)
        assert len(rois) == 1  # one call per forward, and the method restored after the block
        assert "label_and_sample_proposals" not in vars(model.roi_heads)
        return loss_gradients.roi_statistics(rois[0], model.roi_heads.num_classes)

    num_rois, ious = roi_stats_of_a_training_forward()
    # detectron2's sampler: at most 128 RoIs per image; the 2 ground-truth boxes it appends are
    # foreground with IoU 1, and every foreground RoI overlaps its box by at least 0.5.
    assert 2 < num_rois <= 128
    assert (ious >= 0.5).all() and int((ious > 0.999).sum()) >= 2

    # Sampling-Free RoI heads: every proposal of the RPN plus the 2 ground-truth boxes.
    from hpf.modeling import SamplingFreeROIHeads

    model.roi_heads.__class__ = SamplingFreeROIHeads
    num_rois, ious = roi_stats_of_a_training_forward()
    torch.manual_seed(5)
    with EventStorage():
        images = model.preprocess_image(batch)
        proposals, _ = model.proposal_generator(
            images, model.backbone(images.tensor), [batch[0]["instances"]])
    assert num_rois == len(proposals[0]) + 2 > 128
    assert (ious >= 0.5).all()
    summary = loss_gradients.roi_summary(num_rois, ious, 1)
    assert f"{num_rois:.1f} per image, {ious.numel():.1f} foreground" in summary


def test_training_batches_are_the_first_images_in_training_batches(datasets_root):
    from hpf.data.datasets import TINY_SHAPES_SPEC, register_shapes

    register_shapes(os.path.join(datasets_root, "shapes_tiny"), TINY_SHAPES_SPEC,
                    names=("gradients_test_train", "gradients_test_val"))
    cfg = LazyConfig.load(FASTER)
    cfg.dataloader.train.dataset.names = "gradients_test_train"
    cfg.dataloader.train.total_batch_size = 2
    batches = loss_gradients.training_batches(cfg, 5)
    assert [len(b) for b in batches] == [2, 2, 1]
    again = loss_gradients.training_batches(cfg, 5)
    for a, b in zip(sum(batches, []), sum(again, [])):
        assert torch.equal(a["image"], b["image"])  # seeded: the same flips every call
        assert len(a["instances"]) > 0


def test_a_saved_run_prints_a_table_per_run_and_its_roi_statistics(datasets_root, tmp_path,
                                                                    capsys):
    from detectron2.checkpoint import DetectionCheckpointer
    from hpf.data.datasets import TINY_SHAPES_SPEC, register_shapes

    register_shapes(os.path.join(datasets_root, "shapes_tiny"), TINY_SHAPES_SPEC,
                    names=("gradients_run_train", "gradients_run_val"))
    cfg = LazyConfig.load(FASTER)
    cfg.dataloader.train.dataset.names = "gradients_run_train"
    cfg.dataloader.train.total_batch_size = 2
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    torch.manual_seed(0)
    DetectionCheckpointer(instantiate(cfg.model), save_dir=str(tmp_path)).save("model_final")
    assert loss_gradients.main([str(tmp_path), "--images", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path.name}, model_final.pth" in out
    header = "| loss | fpn | backbone | rpn head | box head | classifier | box regressor |"
    assert header in out
    rows = [line for line in out.splitlines() if line.startswith("| loss_")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| loss_cls", "| loss_box_reg", "| loss_rpn_cls", "| loss_rpn_loc"]
    assert "RoIs training the first RoI stage:" in out and "foreground" in out


def test_missing_runs_and_bad_image_counts_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        loss_gradients.main([str(tmp_path)])
    with pytest.raises(SystemExit):
        loss_gradients.main([str(tmp_path), "--images", "0"])
    (tmp_path / "config.yaml").write_text("")
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model_0000099.pth"):
        loss_gradients.main([str(tmp_path), "--checkpoint", "model_0000099.pth"])
