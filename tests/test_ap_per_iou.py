"""tools/analysis/ap_per_iou.py: AP at each IoU threshold, checked on boxes of known IoU."""
import json

import pytest

from conftest import load_tool

ap_per_iou = load_tool("tools/analysis/ap_per_iou.py")


def write_gt(path):
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in (1, 2)]
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000,
         "iscrowd": 0}
        for i in (1, 2)
    ]
    path.write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    ))


def test_exact_and_shifted_box(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    write_gt(gt)
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    # Image 1 exact (IoU 1); image 2 with IoU 0.78 and the lower score.
    (run / "inference" / "coco_instances_results.json").write_text(json.dumps([
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 78], "score": 0.8},
    ]))
    assert ap_per_iou.main([str(run), "--gt", str(gt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | AP50 | AP55 |") and lines[0].endswith("| AP95 | AP |")
    cells = [float(c) for c in lines[2].strip("| ").split(" | ")[1:]]
    # Both found up to IoU 0.75; above it only image 1, at precision 1 up to recall 0.5:
    # 51 of COCO's 101 recall points.
    assert cells[:6] == [100.0] * 6
    assert cells[6:10] == [pytest.approx(100 * 51 / 101, abs=0.05)] * 4
    assert cells[10] == pytest.approx((600 + 4 * 100 * 51 / 101) / 10, abs=0.05)


def test_missing_files_are_named(tmp_path):
    gt = tmp_path / "gt.json"
    with pytest.raises(FileNotFoundError, match="gt.json"):
        ap_per_iou.main([str(tmp_path), "--gt", str(gt)])
    write_gt(gt)
    with pytest.raises(FileNotFoundError, match="coco_instances_results.json"):
        ap_per_iou.main([str(tmp_path / "unfinished"), "--gt", str(gt)])
