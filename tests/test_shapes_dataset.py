"""Tests of the synthetic shapes dataset generator and its detectron2 registration."""

import contextlib
import io
import json
import multiprocessing as mp
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import hpf.data  # noqa: F401  (registers the default names)
from hpf.data.datasets import (
    DEFAULT_SHAPES_NAMES,
    TINY_SHAPES_NAMES,
    ensure_tiny_shapes,
    prepare_registered_shapes,
    register_shapes,
)
from hpf.data.shapes import (
    ShapesSpec,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    main,
    render_shapes_image,
    summarize_shapes_annotations,
)

TINY = ShapesSpec.small(num_train=12, num_val=6)
TEST_NAMES = ("_test_shapes_train", "_test_shapes_val")


def _tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _mtimes(root):
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes") / "tiny")
    info = generate_shapes_dataset(root, TINY)
    assert info["generated"]
    return root


@pytest.fixture
def test_names():
    yield TEST_NAMES
    for n in TEST_NAMES:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)


# ------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_files(tiny_root, tmp_path):
    other = str(tmp_path / "again")
    generate_shapes_dataset(other, TINY, workers=2)  # the output does not depend on workers
    a, b = _tree(tiny_root), _tree(other)
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith(".jpg")]) == TINY.num_train + TINY.num_val
    for k in a:
        assert a[k] == b[k], k


def test_different_seed_gives_different_data(tiny_root, tmp_path):
    other = str(tmp_path / "seed1")
    generate_shapes_dataset(other, ShapesSpec.small(num_train=12, num_val=6, seed=1))
    a, b = _tree(tiny_root), _tree(other)
    for split in ("train", "val"):
        ja = json.loads(a[os.path.join("annotations", f"shapes_{split}.json")])
        jb = json.loads(b[os.path.join("annotations", f"shapes_{split}.json")])
        assert ja["annotations"] != jb["annotations"]
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in jpgs)


def test_images_independent_of_dataset_size_and_split():
    img_a, obj_a = render_shapes_image(ShapesSpec.small(num_train=12), "train", 3)
    img_b, obj_b = render_shapes_image(ShapesSpec.small(num_train=4), "train", 3)
    np.testing.assert_array_equal(img_a, img_b)
    assert obj_a == obj_b
    img_v, _ = render_shapes_image(ShapesSpec.small(num_train=12), "val", 3)
    assert img_v.shape != img_a.shape or not np.array_equal(img_v, img_a)


# ------------------------------------------------------------------------- COCO validity
def test_coco_json_is_valid(tiny_root):
    from pycocotools.coco import COCO

    for split, n in (("train", TINY.num_train), ("val", TINY.num_val)):
        json_file = os.path.join(tiny_root, "annotations", f"shapes_{split}.json")
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(json_file)
        assert sorted(coco.getImgIds()) == list(range(1, n + 1))
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == [1, 2, 3, 4]
        assert [c["name"] for c in cats] == list(TINY.classes)
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            path = os.path.join(tiny_root, split, img["file_name"])
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (img["width"], img["height"])
            assert TINY.min_image_size <= img["width"] <= TINY.max_image_size
            assert TINY.min_image_size <= img["height"] <= TINY.max_image_size
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert TINY.min_objects <= len(anns) <= TINY.max_objects
            for a in anns:
                x, y, w, h = a["bbox"]
                assert w > 0 and h > 0
                assert x >= 0 and y >= 0
                assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
                assert a["iscrowd"] == 0
                assert 0 < a["area"] <= w * h + 1e-6
                assert a["category_id"] in (1, 2, 3, 4)
                assert 1.0 - TINY.max_occlusion - 1e-6 <= a["visibility"] <= 1.0


def test_size_and_count_distribution():
    spec = ShapesSpec()
    objs, counts = [], []
    for i in range(120):
        _, o = render_shapes_image(spec, "train", i)
        objs += o
        counts.append(len(o))
    sides = np.array([max(o["bbox"][2], o["bbox"][3]) for o in objs])
    # sizes span ~12..200 px, log-uniformly: small, medium and large all frequent
    assert sides.min() >= spec.min_object_size - 0.02 and sides.min() < 16
    assert sides.max() <= spec.max_object_size + 0.02 and sides.max() > 150
    assert 0.2 < np.mean(sides < 32) < 0.5
    assert 0.15 < np.mean((sides >= 32) & (sides < 64)) < 0.4
    assert 0.15 < np.mean((sides >= 64) & (sides < 128)) < 0.4
    assert 0.05 < np.mean(sides >= 128) < 0.3
    assert min(counts) >= 1 and max(counts) <= 8
    assert len(set(counts)) >= 6 and 3.5 < np.mean(counts) < 5.5
    classes = np.bincount([o["category_id"] for o in objs], minlength=5)[1:]
    assert classes.min() > 0.15 * len(objs)
    # some objects are partly occluded, but never more than max_occlusion
    vis = np.array([o["visibility"] for o in objs])
    assert np.mean(vis < 0.99) > 0.05 and vis.min() >= 1 - spec.max_occlusion - 1e-6


def test_summary_statistics(tiny_root):
    s = summarize_shapes_annotations(os.path.join(tiny_root, "annotations", "shapes_train.json"))
    assert s["num_images"] == TINY.num_train
    assert sum(s["objects_per_image"]["histogram"].values()) == TINY.num_train
    assert sum(s["class_counts"].values()) == s["num_annotations"]
    assert abs(sum(s["max_side_fraction"].values()) - 1.0) < 0.01


# ------------------------------------------------------------------------- ensure / atomicity
def test_ensure_does_not_regenerate(tiny_root):
    before = _mtimes(tiny_root)
    info = ensure_shapes_dataset(tiny_root, TINY)
    assert info["generated"] is False
    assert info["splits"]["train"]["json_file"] == os.path.join(
        tiny_root, "annotations", "shapes_train.json"
    )
    assert _mtimes(tiny_root) == before
    with pytest.raises(FileExistsError):
        generate_shapes_dataset(tiny_root, TINY)
    assert _mtimes(tiny_root) == before


def test_ensure_with_other_spec_raises(tiny_root):
    before = _mtimes(tiny_root)
    with pytest.raises(ValueError) as e:
        ensure_shapes_dataset(tiny_root, ShapesSpec.small(num_train=12, num_val=6, seed=7))
    assert os.path.join(tiny_root, "spec.json") in str(e.value)
    assert "seed" in str(e.value)
    assert _mtimes(tiny_root) == before


def test_ensure_refuses_foreign_directory(tmp_path):
    root = tmp_path / "foreign"
    root.mkdir()
    (root / "something.txt").write_text("x")
    with pytest.raises(FileExistsError):
        ensure_shapes_dataset(str(root), TINY)


def _ensure_in_child(args):
    root, q, log = args
    import hpf.data.shapes as shapes_module

    write_split = shapes_module._write_split

    def logged(spec, split, out, workers):  # records who draws images (child process only)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {split}\n")
        return write_split(spec, split, out, workers)

    shapes_module._write_split = logged
    info = ensure_shapes_dataset(root, ShapesSpec.small(num_train=6, num_val=3))
    q.put(info["generated"])


def test_concurrent_ensure_generates_once(tmp_path):
    root = str(tmp_path / "concurrent")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    log = str(tmp_path / "writers.log")
    procs = [ctx.Process(target=_ensure_in_child, args=((root, q, log),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    generated = sorted(q.get(timeout=5) for _ in procs)
    assert generated == [False, False, True]
    # the lock makes the other callers wait instead of drawing their own copy
    with open(log) as f:
        writers = [line.split() for line in f]
    assert len({pid for pid, _ in writers}) == 1 and sorted(s for _, s in writers) == ["train", "val"]
    # no temporary directories left behind, the dataset is complete
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".concurrent.")]
    assert leftovers == []
    assert len(os.listdir(os.path.join(root, "train"))) == 6


def test_cli(tmp_path, capsys):
    root = str(tmp_path / "cli")
    assert main(["--root", root, "--num-train", "3", "--num-val", "2", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "generated" in out and root in out
    with open(os.path.join(root, "spec.json")) as f:
        spec = json.load(f)["spec"]
    assert (spec["seed"], spec["num_train"], spec["num_val"]) == (5, 3, 2)
    assert len(os.listdir(os.path.join(root, "val"))) == 2


# ------------------------------------------------------------------------- registration
def test_default_names_registered_lazily():
    for name, split in zip(DEFAULT_SHAPES_NAMES, ("train", "val")):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["circle", "square", "triangle", "star"]
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(os.path.join("shapes", "annotations", f"shapes_{split}.json"))
        assert meta.image_root.endswith(os.path.join("shapes", split))
    for name, split in zip(TINY_SHAPES_NAMES, ("train", "val")):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).image_root.endswith(os.path.join("shapes_tiny", split))
    hpf.data.register_all_hpf_datasets()  # idempotent


def test_tiny_variant(tmp_path):
    info = ensure_tiny_shapes(str(tmp_path / "shapes_tiny"))
    assert info["generated"]
    assert [info["splits"][s]["num_images"] for s in ("train", "val")] == [16, 8]
    assert len(os.listdir(tmp_path / "shapes_tiny" / "val")) == 8
    # same drawing as the full dataset: image i is identical
    _, full_objs = render_shapes_image(ShapesSpec(), "val", 2)
    with open(info["splits"]["val"]["json_file"]) as f:
        tiny = json.load(f)
    tiny_objs = [a for a in tiny["annotations"] if a["image_id"] == 3]
    assert [a["bbox"] for a in tiny_objs] == [o["bbox"] for o in full_objs]


def test_registration_round_trip(tiny_root, test_names):
    registered = register_shapes(tiny_root, TINY, names=test_names)
    assert registered == {test_names[0]: "train", test_names[1]: "val"}
    meta_before = MetadataCatalog.get(test_names[0]).as_dict()
    records = DatasetCatalog.get(test_names[0])
    assert MetadataCatalog.get(test_names[0]).as_dict() == meta_before
    assert meta_before["thing_dataset_id_to_contiguous_id"] == {1: 0, 2: 1, 3: 2, 4: 3}

    with open(os.path.join(tiny_root, "annotations", "shapes_train.json")) as f:
        coco = json.load(f)
    assert len(records) == TINY.num_train
    for r, img in zip(records, coco["images"]):
        assert r["file_name"] == os.path.join(tiny_root, "train", img["file_name"])
        assert os.path.isfile(r["file_name"])
        assert (r["width"], r["height"]) == (img["width"], img["height"])
        expected = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(r["annotations"]) == len(expected)
        for ra, ea in zip(r["annotations"], expected):
            assert ra["category_id"] == ea["category_id"] - 1
            xyxy = BoxMode.convert(ra["bbox"], ra["bbox_mode"], BoxMode.XYXY_ABS)
            x, y, w, h = ea["bbox"]
            np.testing.assert_allclose(xyxy, [x, y, x + w, y + h], atol=1e-6)
            assert 0 <= xyxy[0] < xyxy[2] <= r["width"] + 1e-6
            assert 0 <= xyxy[1] < xyxy[3] <= r["height"] + 1e-6

    assert len(DatasetCatalog.get(test_names[1])) == TINY.num_val
    assert prepare_registered_shapes(test_names[1])["generated"] is False


def test_reregistration_with_other_root_generates_lazily(tiny_root, tmp_path, test_names):
    register_shapes(tiny_root, TINY, names=test_names)
    first = DatasetCatalog.get(test_names[0])
    other = str(tmp_path / "lazy")
    spec = ShapesSpec.small(num_train=4, num_val=2, seed=3)
    register_shapes(other, spec, names=test_names)  # replaces the old entries
    assert not os.path.exists(other)  # nothing generated at registration
    assert MetadataCatalog.get(test_names[0]).image_root == os.path.join(other, "train")
    second = DatasetCatalog.get(test_names[0])
    assert os.path.isfile(os.path.join(other, "spec.json"))
    assert len(second) == 4 and len(first) == TINY.num_train
    assert second[0]["file_name"].startswith(other)
    assert DatasetCatalog.get(test_names[0]) == second  # second load reuses the data
