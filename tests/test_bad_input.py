"""Bad input gets a clear error that names the bad thing, and nothing is lost."""
import logging
import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.structures import BoxMode

from conftest import DEMO_CONFIG, TINY_TRAIN, run_train_net
from hpf.config import apply_overrides
from hpf.data.build import drop_degenerate_boxes
from hpf.data.mapper import DatasetMapper


def test_unknown_override_key_names_the_key_and_suggests():
    cfg = LazyConfig.load(DEMO_CONFIG)
    with pytest.raises(KeyError, match=r"Unknown config key 'train.max_itr'.*train.max_iter"):
        apply_overrides(cfg, ["train.max_itr=10"])
    apply_overrides(cfg, ["train.max_iter=10", "+train.new_key=1"])
    assert cfg.train.max_iter == 10 and cfg.train.new_key == 1


def test_overrides_reach_values_still_to_give_and_list_items():
    """A "???" value is a key the user must set, and list items are keys by index."""
    cfg = LazyConfig.load(DEMO_CONFIG)
    cfg.model.cls_loss.record_dir = "???"
    cfg.train.milestones = [3, 5]
    with pytest.raises(KeyError, match=r"Unknown config key 'model.cls_loss.record_dri'.*"
                                       r"model.cls_loss.record_dir"):
        apply_overrides(cfg, ["model.cls_loss.record_dri=/tmp"])
    with pytest.raises(KeyError, match="Unknown config key 'train.milestones.2'"):
        apply_overrides(cfg, ["train.milestones.2=7"])
    apply_overrides(cfg, ["model.cls_loss.record_dir=/tmp", "train.milestones.1=7"])
    assert cfg.model.cls_loss.record_dir == "/tmp" and list(cfg.train.milestones) == [3, 7]


def test_unknown_override_key_fails_train_net(datasets_root, tmp_path):
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, f"train.output_dir={tmp_path}", "model.num_clases=3"],
        datasets_root, check=False,
    )
    assert proc.returncode != 0
    assert "Unknown config key 'model.num_clases'" in proc.stderr


def test_missing_dataset_folder_names_detectron2_datasets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, f"train.output_dir={tmp_path}/out",
         "dataloader.train.dataset.names=coco_2017_train"],
        empty, check=False,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "FileNotFoundError: Dataset 'coco_2017_train' cannot be loaded" in err
    assert f"DETECTRON2_DATASETS (now '{empty}')" in err
    assert "instances_train2017.json" in err and "datasets/README.md" in err


def _record(file_name, boxes):
    return {
        "file_name": str(file_name), "height": 64, "width": 64, "image_id": 0,
        "annotations": [
            {"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
            for b in boxes
        ],
    }


def test_degenerate_boxes_are_dropped_with_a_count(caplog):
    records = [_record("a.jpg", [[1, 1, 10, 10], [5, 5, 0, 4], [3, 3, 2, -1]]),
               _record("b.jpg", [[1, 1, float("nan"), 3], [2, 2, 5, 5]])]
    with caplog.at_level(logging.WARNING):
        dropped = drop_degenerate_boxes(records, name="toy")
    assert dropped == 3
    assert [len(r["annotations"]) for r in records] == [1, 1]
    assert "Dropped 3 annotation(s) with degenerate boxes" in caplog.text
    assert "a.jpg" in caplog.text and "toy" in caplog.text


@pytest.mark.parametrize("content", [None, b"not an image at all", "truncated"])
def test_missing_or_corrupt_image_names_the_file(tmp_path, content):
    path = tmp_path / "img.jpg"
    if content == "truncated":
        from PIL import Image

        Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with pytest.raises(OSError, match=str(path)):
        mapper(_record(path, [[1, 1, 10, 10]]))


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_checkpoint(datasets_root, tmp_path):
    # The learning rate jumps from 1e-3 to 1e9 at iteration 4: the weights explode and the
    # loss is no longer finite within a few iterations.
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, *TINY_TRAIN, f"train.output_dir={tmp_path}",
         "train.max_iter=40", "train.checkpointer.period=2", "optimizer.lr=1e-3",
         "lr_multiplier.scheduler.values=[1.0,1e12,1e12]",
         "lr_multiplier.scheduler.milestones=[4,39]", "lr_multiplier.scheduler.num_updates=40",
         "lr_multiplier.warmup_length=0.0"],
        datasets_root, check=False,
    )
    assert proc.returncode != 0
    m = re.search(r"Loss became NaN or infinite at iteration (\d+)", proc.stderr)
    assert m, proc.stderr[-3000:]
    bad_iter = int(m.group(1))
    assert 4 <= bad_iter < 39
    assert not os.path.exists(tmp_path / "model_final.pth")
    last = (tmp_path / "last_checkpoint").read_text().strip()
    saved_iter = torch.load(tmp_path / last, map_location="cpu", weights_only=False)["iteration"]
    assert saved_iter < bad_iter
    state = torch.load(tmp_path / last, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _train_net_module():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_device_without_a_gpu_names_the_key_to_set(monkeypatch):
    train_net = _train_net_module()
    cfg = LazyConfig.load(DEMO_CONFIG)
    cfg.train.device = "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"train.device=cuda, but this machine has no usable "
                                           r"CUDA GPU. Add train.device=cpu"):
        train_net.check_device(cfg)
    cfg.train.device = "cpu"
    train_net.check_device(cfg)


def test_an_init_checkpoint_that_cannot_be_read_says_what_to_pass(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from hpf.engine.checkpoint import resume_or_load

    checkpointer = DetectionCheckpointer(torch.nn.Linear(2, 1), str(tmp_path))
    url = "http://127.0.0.1:9/ImageNetPretrained/MSRA/R-50.pkl"  # nothing listens on port 9
    with pytest.raises(RuntimeError) as e:
        resume_or_load(checkpointer, url, resume=False)
    message = str(e.value)
    assert f"R-50.pkl could not be downloaded from {url}" in message
    assert "train.init_checkpoint=/path/to/R-50.pkl" in message
    checkpointer = DetectionCheckpointer(torch.nn.Linear(2, 1), str(tmp_path))
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=f"train.init_checkpoint={missing}: no such file"):
        resume_or_load(checkpointer, missing, resume=False)
