"""hpf.data.neon_trees: the NEON tree-crown tiles built from the deepforest 2.1.0 wheel.

The wheel is taken from ``$DETECTRON2_DATASETS/neon_trees/download/`` (or ``datasets/...``)
when it is there, else downloaded once with pip into a temporary folder.  Without network
these tests FAIL (they do not skip): the dataset cannot be checked without its source."""
import filecmp
import json
import os

import pytest
from PIL import Image

from hpf.data import neon_trees as nt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the pinned wheel gives with the default tiling (also in datasets/README.md).
EXPECTED = {
    "train": {"source_images": 2, "tiles": 65, "background_tiles": 3, "boxes": 1089,
              "source_boxes": 635, "source_boxes_lost": 0,
              "labels": {"Tree": 635, "Alive": 0, "Dead": 0}},
    "val": {"source_images": 2, "tiles": 13, "background_tiles": 0, "boxes": 314,
            "source_boxes": 316, "source_boxes_lost": 2,
            "labels": {"Tree": 279, "Alive": 9, "Dead": 28}},
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory, neon_trees_wheel):
    root = str(tmp_path_factory.mktemp("neon_a") / "neon_trees")
    info = nt.generate_neon_trees(root, wheel=neon_trees_wheel)
    cocos = {}
    for s in nt.SPLITS:
        with open(info["splits"][s]["json_file"]) as f:
            cocos[s] = json.load(f)
    return info, cocos


def test_expected_counts(generated):
    info, cocos = generated
    with open(info["spec_file"]) as f:
        spec = json.load(f)
    for s in nt.SPLITS:
        counts = dict(spec["counts"][s])
        assert counts.pop("boxes_clipped") > 0
        assert counts == EXPECTED[s] == {k: info["splits"][s][k] for k in EXPECTED[s]}
        coco = cocos[s]
        assert len(coco["images"]) == EXPECTED[s]["tiles"]
        assert len(coco["annotations"]) == EXPECTED[s]["boxes"]
        assert len({im["source_image"] for im in coco["images"]}) == 2
        # every source box but the counted lost ones is in a tile; in val in exactly one
        kept = [(im["source_image"], a["source_box_id"])
                for a in coco["annotations"] for im in [coco["images"][a["image_id"] - 1]]]
        assert len(set(kept)) == EXPECTED[s]["source_boxes"] - EXPECTED[s]["source_boxes_lost"]
        if s == "val":
            assert len(kept) == len(set(kept))
    labels = [a["source_label"] for a in cocos["val"]["annotations"]
              if cocos["val"]["images"][a["image_id"] - 1]["site"] == "SOAP"]
    assert sorted(set(labels)) == ["Alive", "Dead"] and len(labels) == 37
    assert open(os.path.join(info["root"], "LICENSE")).read().startswith("MIT License")


def test_splits_share_no_source_image(generated):
    _, cocos = generated
    src = {s: {im["source_image"] for im in cocos[s]["images"]} for s in nt.SPLITS}
    assert src["train"] and src["val"] and not src["train"] & src["val"]
    assert src["val"] == {"2019_YELL_2_541000_4977000_image_crop.png", "SOAP_061.png"}
    sites = {s: {im["site"] for im in cocos[s]["images"]} for s in nt.SPLITS}
    assert "SOAP" in sites["val"] and "SOAP" not in sites["train"]


def test_boxes_inside_tiles_with_positive_area(generated):
    info, cocos = generated
    for s in nt.SPLITS:
        images = {im["id"]: im for im in cocos[s]["images"]}
        for im in images.values():
            with Image.open(os.path.join(info["splits"][s]["image_root"], im["file_name"])) as f:
                assert f.size == (im["width"], im["height"])
                if s == "train":
                    assert f.size == (nt.TILE_SIZE, nt.TILE_SIZE)
                else:
                    assert f.size in {(312, 345), (313, 345), (400, 400)}
        for a in cocos[s]["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and a["area"] == w * h and a["category_id"] == 1
            assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
            # the rule, recomputed from the source box and the tile origin
            tx, ty = im["tile_origin"]
            clipped = nt.clip_box_to_tile(a["source_box"], (tx, ty, tx + im["width"],
                                                            ty + im["height"]))
            assert clipped is not None and list(clipped[0]) == [x, y, x + w, y + h]
            assert a["visible_fraction"] > 0.5
        assert cocos[s]["categories"] == [{"id": 1, "name": "Tree"}]


def test_cut_box_rule_synthetic():
    tile = (400, 0, 800, 400)
    # straddles the left edge x=400: 30 of 40 px inside (75 %) -> kept, clipped
    assert nt.clip_box_to_tile((370, 10, 410, 50), tile) is None  # only 10/40 inside
    kept = nt.clip_box_to_tile((390, 10, 430, 50), tile)
    assert kept == ((0, 10, 30, 50), 0.75)
    # exactly half inside -> dropped (the rule is "more than 50 %")
    assert nt.clip_box_to_tile((380, 10, 420, 50), tile) is None
    # a corner: 60 % x 60 % = 36 % inside -> dropped; 80 % x 80 % = 64 % -> kept
    assert nt.clip_box_to_tile((794, 394, 804, 404), tile) is None
    assert nt.clip_box_to_tile((792, 392, 802, 402), tile) == ((392, 392, 400, 400), 0.64)
    assert nt.clip_box_to_tile((500, 500, 510, 510), tile) is None  # outside
    assert nt.clip_box_to_tile((500, 5, 500, 9), tile) is None  # zero area
    # tiling: stride 300, last tile on the border, small images are one tile
    assert nt.tile_origins(2299) == [0, 300, 600, 900, 1200, 1500, 1800, 1899]
    assert nt.tile_origins(1035) == [0, 300, 600, 635]
    assert nt.tile_origins(400) == [0] and nt.tile_origins(700) == [0, 300]


def test_validation_tiles_partition_the_image():
    assert nt.partition_origins(1249) == [(0, 312), (312, 312), (624, 312), (936, 313)]
    assert nt.partition_origins(1035) == [(0, 345), (345, 345), (690, 345)]
    assert nt.partition_origins(400) == [(0, 400)] and nt.partition_origins(401) == [(0, 200),
                                                                                   (200, 201)]
    for length in (1, 399, 800, 801, 2472):
        parts = nt.partition_origins(length)
        assert parts[0][0] == 0 and sum(size for _, size in parts) == length
        assert all(a + n == b for (a, n), (b, _) in zip(parts, parts[1:]))  # no gap, no overlap
        assert max(size for _, size in parts) <= nt.TILE_SIZE


def test_background_tiles_counted(generated):
    info, cocos = generated
    for s in nt.SPLITS:
        with_boxes = {a["image_id"] for a in cocos[s]["annotations"]}
        empty = [im for im in cocos[s]["images"] if im["id"] not in with_boxes]
        assert len(empty) == info["splits"][s]["background_tiles"] == \
            EXPECTED[s]["background_tiles"]
        for im in empty:  # written to disk like every other tile
            assert os.path.isfile(os.path.join(info["splits"][s]["image_root"],
                                               im["file_name"]))


def test_registered_datasets_load(generated):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    info, _ = generated
    assert set(nt.NEON_TREES_NAMES) <= set(DatasetCatalog.list())  # import hpf.data did it
    try:
        nt.register_neon_trees(info["root"])
        for name, s in zip(nt.NEON_TREES_NAMES, nt.SPLITS):
            dicts = DatasetCatalog.get(name)
            assert len(dicts) == EXPECTED[s]["tiles"]
            anns = [a for d in dicts for a in d["annotations"]]
            assert len(anns) == EXPECTED[s]["boxes"]
            assert {a["category_id"] for a in anns} == {0}
            assert {a["source_label"] for a in anns} >= {"Tree"}
            meta = MetadataCatalog.get(name)
            assert meta.thing_classes == ["Tree"] and meta.evaluator_type == "coco"
            assert sum(not d["annotations"] for d in dicts) == EXPECTED[s]["background_tiles"]
    finally:
        nt.register_neon_trees()  # back to $DETECTRON2_DATASETS/neon_trees


def test_deterministic(generated, neon_trees_wheel, tmp_path):
    info, _ = generated
    again = nt.generate_neon_trees(str(tmp_path / "neon_trees"), wheel=neon_trees_wheel)
    a, b = info["root"], again["root"]
    files = sorted(os.path.relpath(os.path.join(d, f), a)
                   for d, _, fs in os.walk(a) for f in fs)
    files_b = sorted(os.path.relpath(os.path.join(d, f), b)
                     for d, _, fs in os.walk(b) for f in fs)
    assert files == files_b and len(files) == 65 + 13 + 4
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    # reused, not regenerated
    assert nt.ensure_neon_trees(b)["generated"] is False


def test_corrupt_wheel_is_named(tmp_path):
    root = tmp_path / "neon_trees"
    (root / "download").mkdir(parents=True)
    bad = root / "download" / nt.WHEEL_NAME
    bad.write_bytes(b"not a wheel")
    with pytest.raises(nt.NeonTreesDataError, match="sha256") as e:
        nt.ensure_neon_trees(str(root))
    assert str(bad) in str(e.value) and "pip download" in str(e.value)
    assert not (root / "spec.json").exists()
