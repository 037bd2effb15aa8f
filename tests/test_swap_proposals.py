"""tools/analysis/swap_proposals.py (RoI heads of one run on the proposals of another) and
tools/analysis/swap_scores_boxes.py (the scores of one run's box head with the boxes of
another's)."""
import contextlib
import io
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

from conftest import REPO, load_tool

swap_proposals = load_tool("tools/analysis/swap_proposals.py")
swap_scores_boxes = load_tool("tools/analysis/swap_scores_boxes.py")

FASTER = os.path.join(REPO, "configs", "Shapes", "faster_rcnn_R18h_FPN.py")
CASCADE = os.path.join(REPO, "configs", "Shapes", "cascade_rcnn_R18h_FPN.py")


def random_faster_rcnn(seed):
    cfg = LazyConfig.load(FASTER)
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0  # keep detections of random weights
    torch.manual_seed(seed)
    return instantiate(cfg.model).eval()


def same_instances(a, b):
    return (len(a) == len(b) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
            and torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes))


def random_batch():
    torch.manual_seed(2)
    return [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8),
             "height": 192, "width": 256, "image_id": 7}]


@torch.no_grad()
def test_own_cells_are_the_models_inference_and_swapped_cells_differ():
    models = [random_faster_rcnn(0), random_faster_rcnn(1)]
    batch = random_batch()
    grid = swap_proposals.swapped_detections(models, batch)
    assert sorted(grid) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for i, model in enumerate(models):
        own = model(batch)[0]["instances"]
        assert len(own) > 0
        assert same_instances(grid[i, i][0], own)
    # Model 1's RoI heads on model 0's proposals: other boxes than on its own.
    assert not same_instances(grid[0, 1][0], grid[1, 1][0])
    # Post-processed to the input size (192 x 256), as the model's own inference.
    assert grid[0, 1][0].image_size == (192, 256)

    # top-k: the RoI heads see only the first k proposals of each run.
    seen = []
    roi_forward = models[1].roi_heads.forward
    models[1].roi_heads.forward = lambda im, f, props, t=None: (
        seen.append(len(props[0])) or roi_forward(im, f, props, t))
    swap_proposals.swapped_detections(models, batch, topk=5)
    assert seen == [5, 5]


def test_coco_results_map_categories_back_to_the_json_ids():
    instances = Instances((50, 50), pred_boxes=Boxes(torch.tensor([[0.0, 0, 10, 20]] * 2)),
                          scores=torch.tensor([0.9, 0.2]), pred_classes=torch.tensor([1, 0]))
    results = swap_proposals.coco_results(instances, 3, {0: 11, 1: 12})
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in results] == [
        (3, 12, [0.0, 0.0, 10.0, 20.0]), (3, 11, [0.0, 0.0, 10.0, 20.0])]


def test_grid_aps_of_known_detections():
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 5, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40],
                         "area": 1600, "iscrowd": 0}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    exact = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9}]
    # IoU 40 x 35 / 1600 = 0.875: a hit at thresholds 0.50-0.85, a miss at 0.90 and 0.95.
    short = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 35], "score": 0.9}]
    with contextlib.redirect_stdout(io.StringIO()):
        table = swap_proposals.grid_aps({(0, 0): exact, (0, 1): short, (1, 0): []}, gt)
    assert table[0, 0] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0, "AP90": 100})
    assert table[0, 1] == pytest.approx({"AP": 80.0, "AP50": 100.0, "AP75": 100.0, "AP90": 0.0})
    assert table[1, 0] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP90": 0.0}


def test_runs_with_another_test_set_are_refused_by_name(tmp_path):
    a, b = LazyConfig.load(FASTER), LazyConfig.load(FASTER)
    swap_proposals.check_same_test_set([("run_a", a), ("run_b", b)])
    b.dataloader.test.dataset.names = "shapes_tiny_val"
    with pytest.raises(ValueError, match="run_b.*shapes_tiny_val.*run_a"):
        swap_proposals.check_same_test_set([("run_a", a), ("run_b", b)])
    swap_proposals.check_same_sizes([[(96, 128)], [(96, 128)]])
    with pytest.raises(ValueError, match=r"resize the test images differently.*\(96, 120\)"):
        swap_proposals.check_same_sizes([[(96, 128)], [(96, 120)]])
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        swap_proposals.main([str(tmp_path)])
    with pytest.raises(SystemExit):
        swap_proposals.main([str(tmp_path), "--topk", "0"])


def test_evaluate_grid_scores_each_cell_against_the_test_json(datasets_root):
    """The plumbing from per-image Instances to COCO AP: ground-truth boxes as detections score
    100 AP, the same boxes under another class 0, with the test set's image and category ids."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode
    from hpf.data.datasets import TINY_SHAPES_SPEC, register_shapes

    register_shapes(os.path.join(datasets_root, "shapes_tiny"), TINY_SHAPES_SPEC,
                    names=("swap_test_train", "swap_test_val"))
    records = {d["image_id"]: d for d in DatasetCatalog.get("swap_test_val")}
    cfg = LazyConfig.load(FASTER)
    cfg.dataloader.test.dataset.names = "swap_test_val"
    cfg.dataloader.test.num_workers = 0

    def ground_truth(inputs, class_shift):
        annotations = records[inputs["image_id"]]["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        return Instances((inputs["height"], inputs["width"]),
                         pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                         scores=torch.ones(len(boxes)),
                         pred_classes=(torch.tensor([a["category_id"] for a in annotations])
                                       + class_shift) % 4)

    def detect(models, batch):
        assert models == ["a", "b"]
        return {(0, 0): [ground_truth(x, 0) for x in batch],
                (0, 1): [ground_truth(x, 1) for x in batch],
                (1, 0): [ground_truth(x, 0)[:0] for x in batch],
                (1, 1): [ground_truth(x, 0) for x in batch]}

    with contextlib.redirect_stdout(io.StringIO()):
        table = swap_proposals.evaluate_grid(cfg, ["a", "b"], detect)
    assert table[0, 0] == table[1, 1] == pytest.approx(
        {"AP": 100.0, "AP50": 100.0, "AP75": 100.0, "AP90": 100.0})
    assert table[0, 1] == table[1, 0] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP90": 0.0}


@torch.no_grad()
def test_own_scores_and_boxes_are_the_models_inference_and_swaps_differ():
    models = [random_faster_rcnn(0), random_faster_rcnn(1)]
    batch = random_batch()
    for source in (0, 1):
        grid = swap_scores_boxes.swapped_detections(models, batch, proposals_of=source)
        assert sorted(grid) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        own = models[source](batch)[0]["instances"]
        assert len(own) > 0
        assert same_instances(grid[source, source][0], own)
    # On model 1's proposals, model 0's scores with model 1's boxes: every box is one of model
    # 1's per-proposal class boxes (clipped, scaled x2 to the input size), none of model 0's.
    images = models[1].preprocess_image(batch)
    proposals, _ = models[1].proposal_generator(images, models[1].backbone(images.tensor), None)

    def candidates(model):
        features = model.backbone(images.tensor)
        per_class = swap_scores_boxes.box_head_outputs(model, features, proposals)[1][0]
        boxes = Boxes(per_class.reshape(-1, 4))
        boxes.clip(images.image_sizes[0])
        return boxes.tensor * 2

    def all_among(boxes, pool):
        return bool((torch.cdist(boxes, pool, p=float("inf")).min(dim=1).values < 1e-3).all())

    mixed = grid[0, 1][0]
    assert mixed.image_size == (192, 256) and len(mixed) > 0
    assert all_among(mixed.pred_boxes.tensor, candidates(models[1]))
    assert not all_among(mixed.pred_boxes.tensor, candidates(models[0]))
    assert not same_instances(mixed, grid[1, 1][0])  # ranked and kept by model 0's scores


def test_scores_and_boxes_swap_refuses_cascades_and_bad_indices(tmp_path):
    cascade = instantiate(LazyConfig.load(CASCADE).model)
    with pytest.raises(ValueError, match="run_c.*CascadeROIHeads"):
        swap_scores_boxes.check_single_stage("run_c", cascade)
    swap_scores_boxes.check_single_stage("run_f", random_faster_rcnn(0))
    with pytest.raises(SystemExit):
        swap_scores_boxes.main([str(tmp_path), "--proposals-of", "1"])
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        swap_scores_boxes.main([str(tmp_path)])
