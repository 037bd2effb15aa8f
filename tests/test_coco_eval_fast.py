"""hpf.evaluation.COCOEvaluator on faster-coco-eval (the default) gives the official pycocotools
numbers, float for float, with the same printed tables: on a briefly trained shapes detector,
on a synthetic 80-class COCO-like set with crowd boxes, empty images and classes without ground
truth, and on the edge cases of the precision-recall curve."""
import contextlib
import copy
import io
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.evaluation import print_csv_format
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hpf.evaluation import COCOEvaluator, COCOevalFaster, build_evaluator

from conftest import DEMO_CONFIG, REPO

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_logs(name="detectron2.evaluation"):
    """The messages that ``name`` and its children log at INFO and above."""
    logger = logging.getLogger(name)
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def evaluate_both(capsys, dataset_name, predictions, img_ids=None, **kwargs):
    """
    Runs COCOEvaluator with each ``coco_eval_impl`` on the same ``predictions`` (what its
    ``process`` collects). Returns ``{impl: (results, logged lines, summary lines printed)}``;
    the line that names the evaluator is left out of the logged ones.
    """
    out = {}
    for impl in ("faster", "official"):
        evaluator = COCOEvaluator(dataset_name, distributed=False, coco_eval_impl=impl, **kwargs)
        evaluator.reset()
        evaluator._predictions = copy.deepcopy(predictions)  # evaluate() remaps category ids
        capsys.readouterr()
        with captured_logs() as messages:
            results = evaluator.evaluate(img_ids)
            print_csv_format(results)
        logged = [m for m in messages if not m.startswith("Evaluating ")]
        stdout = capsys.readouterr().out
        printed = [line for line in stdout.splitlines() if line.startswith(" Average")]
        out[impl] = results, logged, printed
    return out


def assert_same_results(both, tasks=("bbox",)):
    (fast, fast_log, fast_out), (official, official_log, official_out) = (
        both["faster"], both["official"])
    assert set(fast) == set(official) == set(tasks)
    for task in tasks:
        assert list(fast[task]) == list(official[task])
        for key, value in official[task].items():
            other = fast[task][key]
            # as detectron2 prints them (tables: 3 decimals, copypaste: 4), and as floats
            assert f"{other:.3f}" == f"{value:.3f}" and f"{other:.4f}" == f"{value:.4f}", key
            assert other == value or (math.isnan(other) and math.isnan(value)), key
    assert fast_log == official_log  # the metric tables, per-category tables and copypaste
    assert any(line.startswith("copypaste: ") for line in fast_log)
    assert fast_out == official_out and len(official_out) == 12 * len(tasks)


@pytest.fixture
def registered(tmp_path):
    """Registers COCO-format ground truth under a test name (metadata only, as COCOEvaluator
    reads it); yields a function ``register(dataset) -> name``."""
    names = []

    def register(dataset):
        name = f"_test_coco_eval_fast_{len(names)}"
        json_file = tmp_path / f"{name}.json"
        json_file.write_text(json.dumps(dataset))
        cats = sorted(dataset["categories"], key=lambda c: c["id"])
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(
            json_file=str(json_file), thing_classes=[c["name"] for c in cats],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
        )
        names.append(name)
        return name

    yield register
    for name in names:
        MetadataCatalog.remove(name)


def coco_like(num_images=150, seed=0, masks=False):
    """
    An 80-class COCO-like ground truth and detections, with the cases the evaluation handles
    apart: crowd boxes, images without ground truth, images without detections, classes
    without ground truth (with and without detections: AP nan), a class with only crowd
    ground truth (nan), a class never detected (AP 0), tied scores, and small, medium and large
    boxes. Returns ``(dataset, predictions)``, the predictions as COCOEvaluator collects them
    (contiguous class ids). With ``masks``, ground truths are polygons and detections RLEs.
    """
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    cats = [c for c in COCO_CATEGORIES if c["isthing"]]
    ids = [c["id"] for c in cats]
    with_gt = ids[:70]  # 70-79: no ground truth (75: crowd only); 70-74 get detections
    never_detected, crowd_only = ids[5], ids[75]
    images, anns, predictions = [], [], []

    def polygon(box):  # a box with one corner cut, so that mask and box IoU differ
        x, y, w, h = box
        return [[x, y, x + w, y, x + w, y + 0.6 * h, x + 0.6 * w, y + h, x, y + h]]

    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(320, 641)), int(rng.integers(320, 481))
        images.append({"id": image_id, "width": width, "height": height, "file_name": "x.jpg"})
        num_gt = 0 if image_id % 13 == 0 else int(rng.integers(1, 12))
        side = np.exp(rng.uniform(np.log(6), np.log(300), num_gt))  # small to large
        w, h = side * np.exp(rng.normal(0, 0.3, num_gt)), side
        w, h = np.minimum(w, width - 2), np.minimum(h, height - 2)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        gts = []
        for k in range(num_gt):
            box = [float(x[k]), float(y[k]), float(w[k]), float(h[k])]
            cat = int(rng.choice(with_gt))
            iscrowd = int(rng.random() < 0.05)
            if image_id % 17 == 0 and k == 0:
                cat, iscrowd = crowd_only, 1
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                   "area": box[2] * box[3], "iscrowd": iscrowd}
            if masks:
                ann["segmentation"] = polygon(box)
                rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], height, width))
                ann["area"] = float(mask_util.area(rle))
            anns.append(ann)
            gts.append((box, cat))
        instances = []
        if image_id % 11 != 0:  # some images without any detection
            dets = [(b, c) for b, c in gts if c != never_detected and rng.random() < 0.8]
            dets += [(b, c) for b, c in gts if rng.random() < 0.15]  # duplicates
            for _ in range(int(rng.integers(0, 25))):  # false positives, some of unseen classes
                s = float(np.exp(rng.uniform(np.log(6), np.log(200))))
                dets.append(([float(rng.uniform(0, width - s)), float(rng.uniform(0, height - s)),
                              s, s], int(rng.choice(ids[:75]))))
            for box, cat in dets:
                jitter = rng.normal(0, 0.1, 4) * [box[2], box[3], box[2], box[3]]
                b = [box[0] + jitter[0], box[1] + jitter[1], max(box[2] + jitter[2], 1.0),
                     max(box[3] + jitter[3], 1.0)]
                det = {"image_id": image_id, "category_id": ids.index(cat), "bbox": b,
                       "score": round(float(rng.random()), 2)}  # 2 decimals: ties
                if masks:
                    rle = mask_util.merge(mask_util.frPyObjects(polygon(b), height, width))
                    rle["counts"] = rle["counts"].decode("utf-8")  # as detectron2 writes it
                    det["segmentation"] = rle
                instances.append(det)
        predictions.append({"image_id": image_id, "instances": instances})
    dataset = {"images": images, "annotations": anns, "info": {}, "licenses": [],
               "categories": [{"id": c["id"], "name": c["name"]} for c in cats]}
    return dataset, predictions


def test_coco_like_set_matches_official(registered, capsys):
    dataset, predictions = coco_like()
    areas = np.array([a["area"] for a in dataset["annotations"]])
    assert (areas < 32**2).sum() > 100 and ((areas > 32**2) & (areas < 96**2)).sum() > 100
    assert (areas > 96**2).sum() > 100
    both = evaluate_both(capsys, registered(dataset), predictions)
    assert_same_results(both)
    results = both["official"][0]["bbox"]
    assert all(0 < results[m] < 100 for m in METRICS)
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    ids = sorted(names)
    nan = [k for k, v in results.items() if k.startswith("AP-") and math.isnan(v)]
    # 9 classes without ground truth (5 of them detected), 1 with only crowd ground truth
    assert len(nan) == 10 and "AP-" + names[ids[75]] in nan
    assert results["AP-" + names[ids[5]]] == 0.0  # never detected
    assert any("nan" in line for line in both["faster"][1])  # printed as nan per category


def test_image_subset_and_cocoeval_arrays_match_official(registered, capsys):
    dataset, predictions = coco_like(num_images=60, seed=1)
    name = registered(dataset)
    assert_same_results(evaluate_both(capsys, name, predictions, img_ids=list(range(1, 60, 2))))
    coco_gt = COCOEvaluator(name, distributed=False)._coco_api
    results = [dict(d, category_id=dataset["categories"][d["category_id"]]["id"])
               for p in predictions for d in p["instances"]]
    evals = {}
    for cls in (COCOeval, COCOevalFaster):
        with contextlib.redirect_stdout(io.StringIO()):
            evals[cls] = _evaluate_predictions_on_coco(
                coco_gt, copy.deepcopy(results), "bbox", cocoeval_fn=cls)
    official, fast = evals[COCOeval], evals[COCOevalFaster]
    assert np.array_equal(official.stats, fast.stats)
    for key in ("precision", "recall", "scores"):
        assert official.eval[key].shape == fast.eval[key].shape
        assert np.array_equal(official.eval[key], fast.eval[key]), key
    assert fast.eval["counts"] == official.eval["counts"]


def test_segm_matches_official(registered, capsys):
    dataset, predictions = coco_like(num_images=40, seed=2, masks=True)
    both = evaluate_both(capsys, registered(dataset), predictions)
    assert_same_results(both, tasks=("bbox", "segm"))
    assert both["official"][0]["segm"]["AP"] != both["official"][0]["bbox"]["AP"]


@pytest.mark.parametrize("num_gt,second_is_tp",
                         [(1, False), (2, False), (2, True), (3, False), (300, False), (300, True)])
def test_first_true_positive_precision_is_official(num_gt, second_is_tp):
    """pycocotools' precision of a first true positive is 1 / (1 + eps) (it adds eps to
    tp + fp), 1.0 only once a second true positive follows; faster-coco-eval's C++ gives 1.0
    (no eps). COCOevalFaster gives pycocotools' value in both cases, whatever the number of
    ground truths (300: no recall threshold between the first and second true positive)."""
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, num_gt + 1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
             "iscrowd": 0} for i in range(1, num_gt + 1)]
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": anns,
                       "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.8}]
    if second_is_tp:
        dets[1] = {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.8}
    precision = {}
    for cls in (COCOeval, COCOevalFaster):
        with contextlib.redirect_stdout(io.StringIO()):
            e = _evaluate_predictions_on_coco(coco_gt, copy.deepcopy(dets), "bbox",
                                              cocoeval_fn=cls)
        precision[cls] = e.eval["precision"]
    assert np.array_equal(precision[COCOeval], precision[COCOevalFaster])
    first = precision[COCOeval][0, 0, 0, 0, -1]
    assert first == (1.0 if second_is_tp else 1.0 / (1.0 + np.spacing(1)))
    assert (precision[COCOeval][:, :, 1] == -1).all()  # no ground truth: -1 (AP nan)


def test_trained_shapes_detector_matches_official(datasets_root, capsys):
    """The demo detector trained for 40 iterations on 16 shapes_train images, evaluated on the
    200 images of shapes_val (the same generator seed and spec, so the same images) with every
    detection (score threshold 0)."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from hpf.data.datasets import register_shapes
    from hpf.data.shapes import ShapesSpec, ensure_shapes_dataset

    spec = ShapesSpec(num_train=16)
    assert spec.num_val == ShapesSpec().num_val == 200
    root = datasets_root / "shapes_train16_val"
    ensure_shapes_dataset(str(root), spec)
    names = ("_test_coco_eval_fast_train", "_test_coco_eval_fast_val")
    register_shapes(root, spec, names=names)
    try:
        cfg = LazyConfig.load(DEMO_CONFIG)
        cfg.dataloader.train.dataset.names = names[0]
        cfg.dataloader.train.total_batch_size = 2
        cfg.dataloader.train.num_workers = 0
        cfg.dataloader.test.dataset.names = names[1]
        cfg.dataloader.test.num_workers = 0
        seed_all_rng(0)
        model = instantiate(cfg.model)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        data = iter(instantiate(cfg.dataloader.train))
        with EventStorage(0):
            for _ in range(40):
                loss = sum(model(next(data)).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        model.test_score_thresh = 0.0
        collector = COCOEvaluator(names[1], distributed=False)
        collector.reset()
        with torch.no_grad():
            for inputs in instantiate(cfg.dataloader.test):
                collector.process(inputs, model(inputs))
        both = evaluate_both(capsys, names[1], collector._predictions)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    assert_same_results(both)
    results = both["official"][0]["bbox"]
    assert results["AP"] > 0 and results["AP50"] > 0


def test_choice_reaches_the_evaluator_from_a_lazy_config(tmp_path, registered):
    """The data configs name the choice, so that train_net's overrides (which refuse unknown
    keys) reach it: ``dataloader.evaluator.coco_eval_impl=official``."""
    from detectron2.config import LazyConfig, instantiate

    from hpf.config import apply_overrides

    coco = LazyConfig.load(os.path.join(REPO, "configs", "COCO-Detection", "atss_R_50_FPN_1x.py"))
    assert coco.dataloader.evaluator.coco_eval_impl == "faster"
    name = registered(coco_like(num_images=2)[0])
    cfg = LazyConfig.load(DEMO_CONFIG)
    cfg.dataloader.test.dataset.names = name
    cfg.train.output_dir = str(tmp_path)
    assert instantiate(cfg.dataloader.evaluator)._coco_eval_impl == "faster"
    cfg = apply_overrides(cfg, ["dataloader.evaluator.coco_eval_impl=official"])
    assert instantiate(cfg.dataloader.evaluator)._coco_eval_impl == "official"
    assert build_evaluator(name, coco_eval_impl="official")._coco_eval_impl == "official"
    with pytest.raises(ValueError, match="coco_eval_impl"):
        COCOEvaluator(name, coco_eval_impl="fast")
    with pytest.raises(ValueError, match="use_fast_impl"):
        COCOEvaluator(name, use_fast_impl=True)
    with pytest.raises(ValueError, match="keypoints"):
        COCOevalFaster(None, None, "keypoints")
