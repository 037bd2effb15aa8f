"""hpf.analysis.level_ap and tools/analysis/level_ap.py: the level-wise AP of the HPF paper's
Table 3 on hand-computed cases, the ground-truth-to-level assignment against a plain loop, the
per-level detections against the detector's single-level inference, and the command on a
tiny trained run."""
import json
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances, pairwise_iou

from conftest import REPO, load_tool
from hpf.analysis.level_ap import (
    IOU_THRESHOLDS,
    ImageLevels,
    assign_gt_levels,
    coco_box_ap,
    gt_levels_from_labels,
    level_ap,
    level_detections,
    level_names,
)

level_ap_tool = load_tool("tools/analysis/level_ap.py")


def _detections(boxes, scores, classes, size=(100, 100)):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Instances(size, pred_boxes=Boxes(boxes), scores=torch.tensor(scores, dtype=torch.float32),
                     pred_classes=torch.tensor(classes, dtype=torch.long))


def test_level_ap_hand_computed():
    # Two levels, two images (100 x 100), two classes.
    # Level A: one ground truth (class 0), found by one perfect detection: precision 1 at every
    #   recall point, AP = 100 at every IoU threshold.
    # Level B: two ground truths (class 1), one found by a perfect detection (score 0.8), the
    #   other missed: precision 1 up to recall 0.5, so 51 of COCO's 101 recall points
    #   (0, 0.01, ..., 0.5) have precision 1 and the other 50 have 0: AP = 51 / 101.
    #   Level B's detection of level A's object would be a false positive of B; here B's second
    #   detection (score 0.1) hits nothing: it ranks after the true positive and changes nothing.
    # The second image has no ground truth; its level-A detection (score 0.05, below the true
    # positive) is a false positive after recall 1 was reached: AP stays 100.
    image1 = ImageLevels(
        "a", 100, 100,
        gt_boxes=torch.tensor([[10.0, 10, 30, 30], [50, 50, 90, 90], [0, 60, 20, 90]]),
        gt_classes=torch.tensor([0, 1, 1]), gt_levels=torch.tensor([0, 1, 1]),
        detections=[_detections([[10, 10, 30, 30]], [0.9], [0]),
                    _detections([[50, 50, 90, 90], [60, 0, 70, 10]], [0.8, 0.1], [1, 1])],
    )
    image2 = ImageLevels(
        "b", 100, 100, gt_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0, dtype=torch.long),
        gt_levels=torch.zeros(0, dtype=torch.long),
        detections=[_detections([[0, 0, 50, 50]], [0.05], [0]), _detections([], [], [])],
    )
    result = level_ap([image1, image2], num_levels=2, num_classes=2, names=["P3", "P4"])
    assert list(result) == ["P3", "P4"]
    a, b = result["P3"], result["P4"]
    assert (a["num_gt"], b["num_gt"]) == (1, 2)
    for key in ("AP", "AP50", "AP75"):
        assert a[key] == pytest.approx(100.0)
        assert b[key] == pytest.approx(100.0 * 51 / 101)
    assert a["ap_per_iou"] == pytest.approx([100.0] * 10)
    assert b["ap_per_iou"] == pytest.approx([100.0 * 51 / 101] * 10)
    assert len(IOU_THRESHOLDS) == 10 and IOU_THRESHOLDS[0] == 0.5 and IOU_THRESHOLDS[-1] == 0.95


def test_coco_box_ap_per_iou_empty_levels_and_crowds():
    # A detection [0, 0, 100, 78] of the ground truth [0, 0, 100, 100]: IoU 0.78, a true
    # positive at the IoU thresholds 0.50 ... 0.75 (6 of 10, AP 100 each) and a miss above
    # (AP 0): AP = 60, AP50 = AP75 = 100. Classes 1 and 2 have no ground truth: not averaged.
    one = {"height": 200, "width": 200, "gt_boxes": torch.tensor([[0.0, 0, 100, 100]]),
           "gt_classes": torch.tensor([0]), "pred_boxes": torch.tensor([[0.0, 0, 100, 78]]),
           "scores": torch.tensor([0.9]), "pred_classes": torch.tensor([0])}
    result = coco_box_ap([one], num_classes=3)
    assert result["ap_per_iou"] == pytest.approx([100.0] * 6 + [0.0] * 4)
    assert (result["AP"], result["AP50"], result["AP75"]) == pytest.approx((60.0, 100.0, 100.0))
    # No detections at all: AP 0. No ground truth: no AP (None), not a crash.
    none = dict(one, pred_boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                pred_classes=torch.zeros(0, dtype=torch.long))
    assert coco_box_ap([none], num_classes=3)["AP"] == 0.0
    empty = coco_box_ap([dict(none, gt_boxes=torch.zeros(0, 4),
                              gt_classes=torch.zeros(0, dtype=torch.long))], num_classes=3)
    assert empty["AP"] is None and empty["ap_per_iou"] == [None] * 10 and empty["num_gt"] == 0
    # A false positive (score 0.95) on a crowd region of its class is ignored, as in COCO: AP 60
    # again; without the crowd region it ranks first and halves the precision: AP50 = 50.
    fp = dict(one, pred_boxes=torch.tensor([[0.0, 0, 100, 78], [150, 150, 190, 190]]),
              scores=torch.tensor([0.9, 0.95]), pred_classes=torch.tensor([0, 0]))
    crowd = dict(fp, crowd_boxes=torch.tensor([[140.0, 140, 200, 200]]),
                 crowd_classes=torch.tensor([0]))
    assert coco_box_ap([crowd], num_classes=3)["AP"] == pytest.approx(60.0)
    assert coco_box_ap([fp], num_classes=3)["AP50"] == pytest.approx(50.0)


def test_gt_levels_from_labels_hand_made():
    # 2 levels of 3 and 2 anchors; 3 ground truths (classes 0, 1, 1), num_classes = 2.
    # GT0: anchors 0, 1 (level 0) and 3 (level 1): level 0. GT1: anchors 2 (level 0) and 4
    # (level 1): a tie, the lower level 0. GT2: no positive anchor: -1.
    gt = torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 30], [50, 50, 60, 60]])
    classes = torch.tensor([0, 1, 1])
    matched = gt[[0, 0, 1, 0, 1]]
    labels = torch.tensor([0, 0, 1, 0, 1])
    levels, counts = gt_levels_from_labels(labels, matched, gt, classes, [3, 2], 2)
    assert levels.tolist() == [0, 0, -1]
    assert counts.tolist() == [[2, 1], [1, 1], [0, 0]]
    # Background (2) and ignored (-1) anchors count for no ground truth; GT1 then has only its
    # level-1 anchor.
    labels = torch.tensor([0, 2, -1, 0, 1])
    levels, _ = gt_levels_from_labels(labels, matched, gt, classes, [3, 2], 2)
    assert levels.tolist() == [0, 1, -1]
    # A positive whose matched box is no ground truth is an error, not silently dropped.
    with pytest.raises(RuntimeError, match="none of the ground truths"):
        gt_levels_from_labels(labels, matched + 1, gt, classes, [3, 2], 2)


MODEL_CONFIGS = {"retinanet": "retinanet.py", "fcos": "fcos.py", "atss": "atss.py"}


def tiny_model(arch):
    """The project's ``arch`` model config with an 8-64 channel ResNet, a 64-channel FPN and one
    conv per head tower, 3 classes, random weights, eval mode."""
    from hpf.config import use_small_resnet_fpn

    cfg = LazyConfig.load(os.path.join(REPO, "configs", "common", "models",
                                       MODEL_CONFIGS[arch])).model
    use_small_resnet_fpn(cfg, widths=(8, 16, 32, 64), fpn_channels=64, head_convs=1)
    cfg.num_classes = 3
    if arch == "retinanet":
        cfg.anchor_generator.sizes = [[16, 20], [32, 40], [64, 80], [128, 160], [256, 320]]
        cfg.head.num_anchors = 6
    if arch == "atss":
        cfg.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    if arch == "fcos":  # ranges for a 128 px image, so that every level can get objects
        cfg.regress_ranges = [(0, 16), (16, 32), (32, 48), (48, 64), (64, 1e8)]
    torch.manual_seed(0)
    return instantiate(cfg).eval()


def independent_gt_index(model, arch, anchors, gt_boxes):
    """Per anchor, the index of its ground truth (-1: none), from the matcher directly."""
    if arch == "atss":
        return model.anchor_matcher(anchors, gt_boxes)
    if arch == "retinanet":
        idx, labels = model.anchor_matcher(pairwise_iou(gt_boxes, Boxes.cat(anchors)))
        return torch.where(labels == 1, idx, -1)
    quality, idx = model._match_anchors(gt_boxes, anchors).max(dim=0)
    return torch.where(quality >= 1e-5, idx, -1)


@pytest.mark.parametrize("arch", ["atss", "retinanet", "fcos"])
def test_assignment_and_level_detections(arch):
    model = tiny_model(arch)
    assert level_names(model) == ["P3", "P4", "P5", "P6", "P7"]
    size = 128
    # Boxes from 10 to 120 px, so that several levels get objects; the last two are identical
    # boxes of two classes, told apart by their class.
    gt = Instances((size, size), gt_boxes=Boxes(torch.tensor([
        [4.0, 4, 14, 16], [20, 30, 50, 58], [60, 10, 122, 70], [4, 4, 124, 120],
        [70, 80, 95, 110], [70, 80, 95, 110]])), gt_classes=torch.tensor([0, 1, 2, 0, 1, 2]))
    image = torch.randint(0, 255, (3, size, size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = model.preprocess_image([{"image": image.float()}])
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        anchors = model.anchor_generator(features)
        levels, counts = assign_gt_levels(model, anchors, [gt])[0]

    # The plain loop: per ground truth, count its positives on each level; the most, the lower
    # level on ties, -1 without any.
    gt_index = independent_gt_index(model, arch, anchors, gt.gt_boxes)
    sizes = [len(a) for a in anchors]
    expected = []
    for g in range(len(gt)):
        per_level, start = [], 0
        for n in sizes:
            per_level.append(sum(1 for i in range(start, start + n) if gt_index[i] == g))
            start += n
        best = -1
        for level, count in enumerate(per_level):
            if count > 0 and (best < 0 or count > per_level[best]):
                best = level
        expected.append(best)
    assert levels.tolist() == expected
    assert counts.sum().item() == int((gt_index >= 0).sum())
    assert len({x for x in expected if x >= 0}) >= 2  # a case spanning several levels

    # Each level's detections = the detector's own inference on that level alone (scores of
    # the random model are ~0.01: a threshold of 0 lets every candidate through to the NMS).
    model.test_score_thresh = 0.0
    with torch.no_grad():
        per_level = level_detections(model, images, features, predictions)
        for level in (0, 3):
            one_level = model._transpose_dense_predictions([[p[level]] for p in predictions],
                                                           [3, 4, 1][:len(predictions)])
            logits, deltas, *ctr = [kind[0][0] for kind in one_level]  # image 0
            if arch == "atss":
                direct = model.inference_single_image([anchors[level]], [logits], [deltas],
                                                      [ctr[0]], images.image_sizes[0])
            else:
                scores = logits.sigmoid()
                if arch == "fcos":
                    scores = torch.sqrt(scores * ctr[0].sigmoid())
                direct = model.inference_single_image([anchors[level]], [scores], [deltas],
                                                      images.image_sizes[0])
            got = per_level[level][0]
            assert len(got) > 0
            assert torch.equal(got.pred_boxes.tensor, direct.pred_boxes.tensor)
            assert torch.equal(got.scores, direct.scores)
            assert torch.equal(got.pred_classes, direct.pred_classes)
    model.test_score_thresh = -0.1
    with pytest.raises(ValueError, match="test_score_thresh"):
        level_detections(model, images, features, predictions)


def test_command_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        level_ap_tool.main([str(tmp_path)])
    (tmp_path / "config.yaml").write_text("model:\n  _target_: torch.nn.Linear\n"
                                          "  in_features: 1\n  out_features: 1\n")
    with pytest.raises(FileNotFoundError, match="model_final.pth"):
        level_ap_tool.main([str(tmp_path)])
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="Linear, not a dense detector"):
        level_ap_tool.main([str(tmp_path)])


def test_command_on_a_tiny_run(analysis_run, datasets_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    out = tmp_path / "out"
    assert level_ap_tool.main([str(analysis_run), str(analysis_run), "--labels", "focal", "hpf",
                               "--max-images", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[0] == "| model | metric | P3 | P4 | P5 | P6 | P7 |"
    for label in ("focal", "hpf"):
        rows = [line for line in lines if line.startswith(f"| {label} |")]
        assert [row.split("|")[2].strip() for row in rows] == ["AP", "AP50", "AP75", "GT"]
        assert all(len(row.strip("|").split("|")) == 7 for row in rows)
    # The same run twice: the second row differs by 0 wherever there is an AP.
    hpf_ap = [line for line in lines if line.startswith("| hpf | AP |")][0]
    assert "(+0.0)" in hpf_ap or set(hpf_ap.split("|")[3:-1]) == {" - "}
    assert (out / "level_ap.png").stat().st_size > 0
    record = json.loads((out / "level_ap.json").read_text())
    assert [r["label"] for r in record["runs"]] == ["focal", "hpf"]
    run = record["runs"][0]
    assert list(run["levels"]) == ["P3", "P4", "P5", "P6", "P7"]
    assert run["num_images"] == 2
    assert sum(v["num_gt"] for v in run["levels"].values()) + run["num_unassigned"] == \
        run["num_gt"] > 0
    assert all(len(v["ap_per_iou"]) == 10 for v in run["levels"].values())
    assert record["runs"][1]["levels"] == run["levels"]
