"""Dataset loading with clear errors: missing datasets name their files, degenerate boxes go."""
import logging
import os

import numpy as np
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.build import get_detection_dataset_dicts as _d2_get_detection_dataset_dicts

from .voc import voc_layout_problem

logger = logging.getLogger(__name__)

DATASETS_DOC = "datasets/README.md"


def _missing_dataset_error(name, err):
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return FileNotFoundError(
        f"Dataset '{name}' cannot be loaded: {err}. Datasets are read from "
        f"$DETECTRON2_DATASETS (now '{os.path.abspath(root)}'); COCO is expected as "
        "coco/annotations/instances_{train,val}2017.json, coco/{train,val}2017/ and "
        f"coco/annotations/image_info_test-dev2017.json + coco/test2017/. See {DATASETS_DOC}."
    )


def _missing_voc_error(name, problem):
    root = os.path.abspath(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return FileNotFoundError(
        f"Dataset '{name}' cannot be loaded: {problem}. PASCAL VOC is expected as "
        f"VOC2007/ and VOC2012/ under $DETECTRON2_DATASETS (now '{root}'), each with "
        "Annotations/, ImageSets/Main/<split>.txt and JPEGImages/; voc_2007_test needs the "
        f"VOC2007 test set unpacked into the same VOC2007/. See {DATASETS_DOC}."
    )


def drop_degenerate_boxes(dataset_dicts, name="dataset"):
    """
    Removes annotations whose box has a non-positive or non-finite width or height.

    detectron2 would silently drop such boxes later, in the mapper; doing it here lets the
    count be reported once. Returns the number of dropped annotations.
    """
    dropped, first = 0, None
    for record in dataset_dicts:
        annos = record.get("annotations")
        if not annos:
            continue
        kept = []
        for anno in annos:
            x0, y0, x1, y1 = _as_xyxy(anno)
            if np.isfinite([x0, y0, x1, y1]).all() and x1 > x0 and y1 > y0:
                kept.append(anno)
            else:
                dropped += 1
                first = first or (record.get("file_name"), anno["bbox"])
        record["annotations"] = kept
    if dropped:
        logger.warning(
            f"Dropped {dropped} annotation(s) with degenerate boxes (width or height <= 0, "
            f"or not finite) from {name}; first: image {first[0]}, bbox {first[1]}."
        )
    return dropped


def _as_xyxy(anno):
    from detectron2.structures import BoxMode

    return BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS)


def get_detection_dataset_dicts(names, filter_empty=True, **kwargs):
    """
    detectron2's ``get_detection_dataset_dicts`` with clearer failures: a dataset whose files
    are missing raises ``FileNotFoundError`` naming the dataset, ``DETECTRON2_DATASETS`` and the
    expected layout; degenerate boxes are dropped with one warning that counts them.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        # detectron2 would notice a missing JPEGImages/ only when a worker reads an image.
        problem = voc_layout_problem(name)
        if problem:
            raise _missing_voc_error(name, problem)
    try:
        dicts = _d2_get_detection_dataset_dicts(names, filter_empty=False, **kwargs)
    except (FileNotFoundError, OSError) as e:
        raise _missing_dataset_error("+".join(names), e) from e
    if isinstance(dicts, list) and len(dicts) and "annotations" in dicts[0]:
        drop_degenerate_boxes(dicts, name="+".join(names))
        if filter_empty:
            dicts = filter_images_with_only_crowd_annotations(dicts)
    return dicts
