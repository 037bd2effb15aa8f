"""Registration of the synthetic shapes dataset (:mod:`hpf.data.shapes`) in detectron2.

``import hpf.data`` registers ``shapes_train`` and ``shapes_val`` (default spec, root
``$DETECTRON2_DATASETS/shapes``, ``DETECTRON2_DATASETS`` defaulting to ``datasets`` relative
to the working directory, as for detectron2's builtin datasets; the variable is read at
import) and the tiny variant ``shapes_tiny_train`` / ``shapes_tiny_val`` (16 / 8 images, root
``$DETECTRON2_DATASETS/shapes_tiny``).  Registration is lazy:
nothing is generated until ``DatasetCatalog.get(name)`` is first called, which generates both
splits (a few seconds) if the root does not hold them yet.

Metadata (set at registration, identical to what ``load_coco_json`` sets on loading):
``thing_classes`` (``spec.classes``), ``thing_dataset_id_to_contiguous_id``
(``{1: 0, 2: 1, ...}``), ``json_file``, ``image_root``, ``evaluator_type="coco"``, plus
``dataset_root`` and ``shapes_spec`` (the spec as a dict).

COCOEvaluator reads ``json_file`` when it is constructed, so the dataset must exist by then.
detectron2's ``DefaultTrainer.test`` and ``inference_on_dataset(model, build_test_loader...,
evaluator)`` build the test loader (which generates the data) before the evaluator, so the
usual paths just work; elsewhere call :func:`prepare_registered_shapes` (cheap when the data
exists) before creating the evaluator.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from .shapes import SPLITS, ShapesSpec, ensure_shapes_dataset, shapes_dataset_paths

__all__ = [
    "DEFAULT_SHAPES_NAMES",
    "TINY_SHAPES_NAMES",
    "TINY_SHAPES_SPEC",
    "default_shapes_root",
    "default_tiny_shapes_root",
    "ensure_tiny_shapes",
    "register_shapes",
    "prepare_registered_shapes",
    "register_all_hpf_datasets",
]

#: Names of the default registration, in the order (train, val).
DEFAULT_SHAPES_NAMES: Tuple[str, str] = ("shapes_train", "shapes_val")

#: Names of the tiny variant (tests, smoke runs), in the order (train, val).
TINY_SHAPES_NAMES: Tuple[str, str] = ("shapes_tiny_train", "shapes_tiny_val")

#: Spec of the tiny variant: 16 train / 8 val images, otherwise the default spec (the same
#: drawing, so image i of the tiny set equals image i of the full set).
TINY_SHAPES_SPEC = ShapesSpec.small(num_train=16, num_val=8)

# name -> (root, spec, split) of every shapes dataset registered by this module
_REGISTERED: Dict[str, Tuple[str, ShapesSpec, str]] = {}


def default_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/shapes`` (``datasets/shapes`` when the variable is unset)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes")


def default_tiny_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/shapes_tiny`` (``datasets/shapes_tiny`` when unset)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes_tiny")


def ensure_tiny_shapes(root: Optional[str] = None) -> Dict:
    """Generates (if missing) the tiny variant (:data:`TINY_SHAPES_SPEC`) at `root`, default
    :func:`default_tiny_shapes_root`; returns :func:`~hpf.data.shapes.ensure_shapes_dataset`'s
    info."""
    return ensure_shapes_dataset(default_tiny_shapes_root() if root is None else root,
                                 TINY_SHAPES_SPEC)


def _load(name: str, root: str, spec: ShapesSpec, split: str):
    ensure_shapes_dataset(root, spec)
    paths = shapes_dataset_paths(root, split)
    return load_coco_json(paths["json_file"], paths["image_root"], dataset_name=name)


def register_shapes(
    root: Optional[str] = None,
    spec: Optional[ShapesSpec] = None,
    names: Sequence[Optional[str]] = DEFAULT_SHAPES_NAMES,
) -> Dict[str, str]:
    """Registers the shapes dataset's splits in DatasetCatalog / MetadataCatalog.

    Args:
        root: dataset folder; default :func:`default_shapes_root` (evaluated now).
        spec: generator parameters; default ``ShapesSpec()``.  A root holds exactly one spec:
            loading raises if `root` was generated with another spec.
        names: dataset names for the (train, val) splits; ``None`` skips a split.  Existing
            registrations under these names are replaced.

    Returns:
        ``{name: split}`` of the registered names.
    """
    root = default_shapes_root() if root is None else os.fspath(root)
    spec = ShapesSpec() if spec is None else spec
    if len(names) != len(SPLITS):
        raise ValueError(f"names must give one name per split {SPLITS}, got {names}")
    registered = {}
    for name, split in zip(names, SPLITS):
        if name is None:
            continue
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name, lambda name=name, split=split: _load(name, root, spec, split)
        )
        paths = shapes_dataset_paths(root, split)
        MetadataCatalog.get(name).set(
            thing_classes=list(spec.classes),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(spec.classes))},
            json_file=paths["json_file"],
            image_root=paths["image_root"],
            evaluator_type="coco",
            dataset_root=root,
            shapes_spec=spec.to_dict(),
        )
        _REGISTERED[name] = (root, spec, split)
        registered[name] = split
    return registered


def prepare_registered_shapes(name: str) -> Dict:
    """Generates the data of a registered shapes dataset if needed (e.g. before creating a
    COCOEvaluator); returns :func:`~hpf.data.shapes.ensure_shapes_dataset`'s info.  Raises
    KeyError for names not registered by :func:`register_shapes`."""
    if name not in _REGISTERED or name not in DatasetCatalog.list():
        raise KeyError(f"{name!r} is not a shapes dataset registered by register_shapes()")
    root, spec, _ = _REGISTERED[name]
    return ensure_shapes_dataset(root, spec)


def register_all_hpf_datasets() -> None:
    """Registers the project's datasets, each unless a dataset of that name is already
    registered (idempotent; user registrations are kept):

    * ``shapes_train`` / ``shapes_val``: default spec at ``$DETECTRON2_DATASETS/shapes``;
    * ``shapes_tiny_train`` / ``shapes_tiny_val``: :data:`TINY_SHAPES_SPEC` at
      ``$DETECTRON2_DATASETS/shapes_tiny``.
    """
    for names, root, spec in (
        (DEFAULT_SHAPES_NAMES, default_shapes_root(), ShapesSpec()),
        (TINY_SHAPES_NAMES, default_tiny_shapes_root(), TINY_SHAPES_SPEC),
    ):
        missing = [n if n not in DatasetCatalog.list() else None for n in names]
        if any(n is not None for n in missing):
            register_shapes(root, spec, names=missing)
