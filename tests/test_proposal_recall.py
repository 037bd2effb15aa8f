"""tools/analysis/proposal_recall.py: best IoU per ground-truth box and recall, on boxes of
known IoU."""
import pytest
import torch
from detectron2.structures import Boxes

from conftest import load_tool

proposal_recall = load_tool("tools/analysis/proposal_recall.py")


def test_best_iou_per_gt_and_recall():
    gt = Boxes(torch.tensor([[0.0, 0, 100, 100], [200, 200, 300, 300]]))
    # For the first box: IoU 0.78 and 0.5 (it takes the best); nothing near the second.
    proposals = Boxes(torch.tensor([[0.0, 0, 100, 78], [0, 0, 100, 50], [500, 500, 600, 600]]))
    best = proposal_recall.best_iou_per_gt(proposals, gt)
    assert best.tolist() == pytest.approx([0.78, 0.0])
    mean, recalls = proposal_recall.summarize(best, [0.5, 0.75, 0.8])
    assert mean == pytest.approx(0.39)
    assert recalls == [0.5, 0.5, 0.0]
    # The top-1 proposal only: still the 0.78 one.
    assert proposal_recall.best_iou_per_gt(proposals[:1], gt).tolist() == pytest.approx([0.78, 0])


def test_no_proposals_no_ground_truth_and_unfinished_run(tmp_path):
    gt = Boxes(torch.tensor([[0.0, 0, 10, 10]]))
    assert proposal_recall.best_iou_per_gt(Boxes(torch.zeros(0, 4)), gt).tolist() == [0.0]
    assert proposal_recall.best_iou_per_gt(gt, Boxes(torch.zeros(0, 4))).numel() == 0
    with pytest.raises(ValueError, match="No ground-truth boxes"):
        proposal_recall.summarize(torch.zeros(0), [0.5])
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        proposal_recall.main([str(tmp_path)])


def test_gt_boxes_are_xyxy_without_crowds():
    from detectron2.structures import BoxMode

    record = {"annotations": [
        {"bbox": [10, 20, 30, 40], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0},
        {"bbox": [0, 0, 50, 50], "bbox_mode": BoxMode.XYXY_ABS},
        {"bbox": [0, 0, 99, 99], "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 1},
    ]}
    assert proposal_recall.gt_boxes(record).tensor.tolist() == [[10, 20, 40, 60], [0, 0, 50, 50]]
    assert len(proposal_recall.gt_boxes({})) == 0
