"""PASCAL VOC: a tiny dataset in the VOC layout, registered as detectron2 registers its builtin
voc_* names, goes through a VOC config's loaders, evaluator selection and train_net's do_test;
missing folders give an error that names them."""
import json
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.data.datasets.pascal_voc import CLASS_NAMES
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from conftest import REPO, load_tool
from hpf.data.build import get_detection_dataset_dicts
from hpf.evaluation import COCOEvaluator, build_evaluator

VOC_CONFIG = os.path.join(REPO, "configs", "PascalVOC-Detection", "retinanet_R_50_FPN_0_2x.py")
W, H = 128, 96


def _objects(image):
    """(class, xmin, ymin, xmax, ymax, difficult) of image 0, 1, 2: the 20 classes, class 0
    twice (image 0 and 2) and one difficult object, 1-based inclusive pixels as in VOC."""
    classes = {0: range(0, 7), 1: range(7, 14), 2: list(range(14, 20)) + [0, 5]}[image]
    objects = []
    for k, c in enumerate(classes):
        x0, y0 = 1 + (k % 4) * 31, 1 + (k // 4) * 45
        objects.append((c, x0, y0, x0 + 24, y0 + 34, int(image == 2 and c == 5)))
    return objects


def write_voc(root, split):
    for folder in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    ids = [f"00000{i}" for i in range(3)]
    with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    for i, image_id in enumerate(ids):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(
            os.path.join(root, "JPEGImages", image_id + ".jpg"))
        objects = "".join(
            f"<object><name>{CLASS_NAMES[c]}</name><pose>Unspecified</pose>"
            f"<truncated>0</truncated><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for c, x0, y0, x1, y1, d in _objects(i)
        )
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>{W}</width>"
                    f"<height>{H}</height><depth>3</depth></size>{objects}</annotation>")
    return ids


@pytest.fixture
def register(request):
    """register(dirname, split, year) -> a fresh dataset name, as detectron2's builtin VOC."""
    names = []

    def _register(dirname, split, year):
        name = f"voc_tiny_{year}_{split}_{uuid.uuid4().hex[:8]}"
        register_pascal_voc(name, str(dirname), split, year)
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


class Oracle(torch.nn.Module):
    """Returns given detections per image_id, in original image coordinates."""

    def __init__(self, detections):
        super().__init__()
        self.detections = detections

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            dets = self.detections.get(x["image_id"], [])
            instances = Instances((x["height"], x["width"]))
            instances.pred_boxes = Boxes(torch.tensor([d[1] for d in dets]).reshape(-1, 4))
            instances.scores = torch.tensor([d[2] for d in dets], dtype=torch.float32)
            instances.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.long)
            outputs.append({"instances": instances})
        return outputs


def test_voc_config_evaluates_a_tiny_voc_set(tmp_path, register):
    ids = write_voc(tmp_path / "VOC2007", "test")
    name = register(tmp_path / "VOC2007", "test", 2007)
    cfg = LazyConfig.load(VOC_CONFIG)
    cfg.dataloader.test.dataset.names = name
    cfg.dataloader.test.num_workers = 0
    cfg.train.output_dir = str(tmp_path / "out")
    os.makedirs(cfg.train.output_dir)
    assert isinstance(instantiate(cfg.dataloader.evaluator), PascalVOCDetectionEvaluator)

    # Ground truth as the project's loader reads it (detectron2 boxes: xmin, ymin - 1).
    records = {r["image_id"]: r for r in get_detection_dataset_dicts(name, filter_empty=False)}
    assert sorted(records) == ids
    assert sorted({a["category_id"] for r in records.values() for a in r["annotations"]}) == \
        list(range(20))
    perfect = {i: [(a["category_id"], list(a["bbox"]), 0.9) for a in r["annotations"]]
               for i, r in records.items()}
    do_test = load_tool("train_net.py").do_test

    def map50(detections):
        return do_test(cfg, Oracle(detections))["bbox"]["AP50"]

    assert map50(perfect) == pytest.approx(100.0)
    with open(os.path.join(cfg.train.output_dir, f"eval_{name}.json")) as f:
        assert json.load(f)["bbox"]["AP50"] == pytest.approx(100.0)
    # Every box moved right by half its width: IoU about 1/3, so no detection is correct.
    shifted = {i: [(c, [b[0] + (b[2] - b[0]) / 2, b[1], b[2] + (b[2] - b[0]) / 2, b[3]], s)
                   for c, b, s in dets] for i, dets in perfect.items()}
    assert map50(shifted) == pytest.approx(0.0)
    # One of the two objects of class 0 missed: recall 0.5 at precision 1 gives 6/11 under the
    # VOC2007 11-point AP (the papers' metric), 0.5 under the later area AP.
    missed = dict(perfect, **{ids[2]: [d for d in perfect[ids[2]] if d[0] != 0]})
    assert map50(missed) == pytest.approx((19 * 100 + 100 * 6 / 11) / 20)


def test_voc_config_reads_07_plus_12_for_training(tmp_path, register):
    names = []
    for year in (2007, 2012):
        write_voc(tmp_path / f"VOC{year}", "trainval")
        names.append(register(tmp_path / f"VOC{year}", "trainval", year))
    cfg = LazyConfig.load(VOC_CONFIG)
    assert list(cfg.dataloader.train.dataset.names) == ["voc_2007_trainval", "voc_2012_trainval"]
    cfg.dataloader.train.dataset.names = names
    dicts = instantiate(cfg.dataloader.train.dataset)
    # 3 images per year; detectron2 keeps "difficult" objects for training (7 + 7 + 8 each).
    assert len(dicts) == 6
    assert sum(len(d["annotations"]) for d in dicts) == 2 * 22
    assert {d["file_name"].split(os.sep)[-3] for d in dicts} == {"VOC2007", "VOC2012"}


@pytest.mark.parametrize("missing", ["", "Annotations", "ImageSets/Main", "JPEGImages",
                                     "ImageSets/Main/trainval.txt"])
def test_missing_voc_folder_is_named(tmp_path, register, missing):
    root = tmp_path / "VOC2012"
    if missing:
        write_voc(root, "trainval")
        target = root / missing
        if target.is_dir():
            for f in target.iterdir():
                f.unlink()
            target.rmdir()
        else:
            target.unlink()
    name = register(root, "trainval", 2012)
    with pytest.raises(FileNotFoundError) as e:
        get_detection_dataset_dicts(name)
    message = str(e.value)
    assert f"Dataset '{name}' cannot be loaded" in message
    assert f"'{os.path.abspath(root / missing)}' does not exist" in message
    assert "Annotations/, ImageSets/Main/<split>.txt and JPEGImages/" in message
    assert "datasets/README.md" in message


def test_builtin_voc_names_without_data_name_the_folder(tmp_path, monkeypatch):
    # detectron2 registers voc_* under $DETECTRON2_DATASETS (default "datasets", relative).
    dirname = MetadataCatalog.get("voc_2007_trainval").dirname
    if os.path.isabs(dirname):
        pytest.skip("DETECTRON2_DATASETS is absolute here; the relative case is what is tested")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'.*VOC2007' does not exist"):
        get_detection_dataset_dicts(["voc_2007_trainval", "voc_2012_trainval"])
    write_voc(tmp_path / dirname, "trainval")
    with pytest.raises(FileNotFoundError, match="'.*VOC2012' does not exist"):
        get_detection_dataset_dicts(["voc_2007_trainval", "voc_2012_trainval"])


def test_build_evaluator_picks_by_registration(tmp_path, register):
    write_voc(tmp_path / "VOC2007", "test")
    voc = register(tmp_path / "VOC2007", "test", 2007)
    assert isinstance(build_evaluator(voc), PascalVOCDetectionEvaluator)
    assert isinstance(build_evaluator([voc]), PascalVOCDetectionEvaluator)
    json_file = tmp_path / "tiny.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    coco = f"coco_tiny_{uuid.uuid4().hex[:8]}"
    register_coco_instances(coco, {}, str(json_file), str(tmp_path))
    try:
        evaluator = build_evaluator(coco, output_dir=str(tmp_path / "out"))
        assert isinstance(evaluator, COCOEvaluator)
    finally:
        DatasetCatalog.remove(coco)
        MetadataCatalog.remove(coco)
    with pytest.raises(ValueError, match="one test dataset"):
        build_evaluator([voc, coco])


@pytest.mark.parametrize("name", ["retinanet_sampling_free_R_50_FPN_0_2x",
                                  "faster_rcnn_sampling_free_R_50_FPN_0_2x"])
def test_voc_sampling_free_config_trains_one_step(tmp_path, register, name):
    """The VOC configs' model on the tiny VOC set, shrunk to 64 px: the "auto" statistics (the
    README's override for RetinaNet) use the 20 VOC classes, and one training step gives
    finite losses and gradients."""
    from detectron2.utils.events import EventStorage
    from hpf.losses import prior_bias
    from hpf.modeling.priors import initialize_auto_priors

    write_voc(tmp_path / "VOC2007", "trainval")
    cfg = LazyConfig.load(os.path.join(os.path.dirname(VOC_CONFIG), name + ".py"))
    cfg.dataloader.train.dataset.names = register(tmp_path / "VOC2007", "trainval", 2007)
    cfg.dataloader.train.mapper.augmentations[0].short_edge_length = 64
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = 0
    if name.startswith("retinanet"):
        cfg.model.prior_prob = cfg.model.test_score_thresh = "auto"
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    loader = instantiate(cfg.dataloader.train)
    record = initialize_auto_priors(model, loader, 2)
    if name.startswith("retinanet"):
        assert record["num_classes"] == 20
        pi = record["num_foreground_anchors"] / (record["num_anchors"] * 20)
        assert record["prior_prob"] == pytest.approx(pi)
        bias = model.head.cls_score.bias.detach()
        assert torch.allclose(bias, torch.full_like(bias, prior_bias(pi)))
        assert model.test_score_thresh == pytest.approx(record["adaptive_threshold"])
    else:
        assert model.roi_heads.num_classes == 20 and record["num_foreground_anchors"] > 0
    model.train()
    with EventStorage(0):
        losses = model(next(iter(loader)))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
