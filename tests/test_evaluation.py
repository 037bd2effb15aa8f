"""COCO evaluation paths: test-dev results json + server zip, and metric correctness."""
import json
import os
import shutil
import zipfile

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from conftest import DEMO_CONFIG, run_train_net


def make_testdev(datasets_root, dest):
    """A COCO tree whose test-dev image list has 3 images (taken from the tiny shapes set)."""
    coco = dest / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "test2017").mkdir()
    src = os.path.join(datasets_root, "shapes_tiny", "val")
    images = []
    for i, name in enumerate(sorted(os.listdir(src))[:3]):
        shutil.copy(os.path.join(src, name), coco / "test2017" / name)
        from PIL import Image

        w, h = Image.open(os.path.join(src, name)).size
        images.append({"id": 1000 + i, "file_name": name, "width": w, "height": h})
    cats = [{"id": c["id"], "name": c["name"], "supercategory": "x"}
            for c in COCO_CATEGORIES if c["isthing"]]
    info = {"images": images, "categories": cats, "info": {}, "licenses": []}
    with open(coco / "annotations" / "image_info_test-dev2017.json", "w") as f:
        json.dump(info, f)
    return images, {c["id"] for c in cats}


def test_testdev_writes_results_json_and_server_zip(datasets_root, tmp_path):
    images, cat_ids = make_testdev(datasets_root, tmp_path)
    out = tmp_path / "out"
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, "--eval-only", f"train.output_dir={out}",
         "dataloader.test.dataset.names=coco_2017_test-dev", "dataloader.test.num_workers=0",
         "model.num_classes=80", "model.test_score_thresh=0.0"],
        tmp_path,
    )
    results_file = out / "inference" / "coco_instances_results.json"
    zip_file = out / "inference" / "detections_test-dev2017_hpf_results.zip"
    assert str(zip_file) in proc.stdout + proc.stderr, "the log says where the zip is"
    results = json.loads(results_file.read_text())
    assert len(results) > 0
    ids = {im["id"] for im in images}
    for det in results:
        assert det["image_id"] in ids
        assert det["category_id"] in cat_ids
        assert len(det["bbox"]) == 4 and det["bbox"][2] >= 0 and det["bbox"][3] >= 0
        assert 0.0 <= det["score"] <= 1.0
    with zipfile.ZipFile(zip_file) as zf:
        assert zf.namelist() == ["detections_test-dev2017_hpf_results.json"]
        assert json.loads(zf.read(zf.namelist()[0])) == results


def test_check_coco_reports_present_and_missing_splits(datasets_root, tmp_path):
    import subprocess
    import sys

    make_testdev(datasets_root, tmp_path)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    cmd = [sys.executable, "-m", "hpf.data.check_coco", "--splits"]
    ok = subprocess.run(cmd + ["coco_2017_test-dev"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "coco_2017_test-dev: ok, 3 images" in ok.stdout
    bad = subprocess.run(cmd + ["coco_2017_val"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "missing annotation file" in bad.stdout and "instances_val2017.json" in bad.stdout
    os.remove(tmp_path / "coco" / "test2017" / sorted(os.listdir(tmp_path / "coco" / "test2017"))[0])
    partial = subprocess.run(cmd + ["coco_2017_test-dev"], env=env, capture_output=True, text=True)
    assert partial.returncode == 1 and "1 of 3 images missing" in partial.stdout
