"""Datasets of the HPF project.  Importing this package registers ``shapes_train``,
``shapes_val``, ``shapes_tiny_train`` and ``shapes_tiny_val`` in detectron2's DatasetCatalog
(lazily: data is generated on first use); see :mod:`hpf.data.datasets`; and
``neon_trees_train`` / ``neon_trees_val`` (:mod:`hpf.data.neon_trees`)."""

import warnings as _warnings

# `python -m hpf.data.shapes` imports this package, which imports .shapes before runpy executes
# it as __main__; runpy then warns about it although it is harmless here (the CLI only uses
# the __main__ copy).  Silence exactly that message.
_warnings.filterwarnings(
    "ignore", message=r".*'hpf\.data\.shapes' found in sys\.modules", category=RuntimeWarning
)
_warnings.filterwarnings(
    "ignore", message=r".*'hpf\.data\.neon_trees' found in sys\.modules",
    category=RuntimeWarning,
)

from .shapes import (  # noqa: E402
    ShapesSpec,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    summarize_shapes_annotations,
)
from .datasets import (  # noqa: E402
    DEFAULT_SHAPES_NAMES,
    TINY_SHAPES_NAMES,
    TINY_SHAPES_SPEC,
    default_shapes_root,
    ensure_tiny_shapes,
    prepare_registered_shapes,
    register_all_hpf_datasets,
    register_shapes,
)

from .neon_trees import (  # noqa: E402
    NEON_TREES_NAMES,
    ensure_neon_trees,
    register_neon_trees,
)

register_all_hpf_datasets()
# neon_trees_train / neon_trees_val (real NEON aerial tree crowns, generated on first use from
# the deepforest 2.1.0 wheel; see hpf.data.neon_trees); user registrations are kept.
register_neon_trees(only_missing=True)

__all__ = [
    "ShapesSpec",
    "ensure_shapes_dataset",
    "generate_shapes_dataset",
    "summarize_shapes_annotations",
    "DEFAULT_SHAPES_NAMES",
    "TINY_SHAPES_NAMES",
    "TINY_SHAPES_SPEC",
    "default_shapes_root",
    "ensure_tiny_shapes",
    "prepare_registered_shapes",
    "register_all_hpf_datasets",
    "register_shapes",
    "NEON_TREES_NAMES",
    "ensure_neon_trees",
    "register_neon_trees",
]
