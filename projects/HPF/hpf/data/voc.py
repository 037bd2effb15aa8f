"""PASCAL VOC in its original layout, through detectron2's own registrations (``voc_2007_trainval``,
``voc_2007_test``, ``voc_2012_trainval``, ... or any ``register_pascal_voc`` dataset): a layout
check that names the missing folder before anything is read."""
import os
from typing import Optional

from detectron2.data import MetadataCatalog

__all__ = ["VOC_FOLDERS", "is_voc_dataset", "voc_layout_problem"]

#: The folders of a VOC<year> directory that detectron2's loader and evaluator read.
VOC_FOLDERS = ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages")


def _voc_meta(name):
    if name not in MetadataCatalog.list():
        return None
    meta = MetadataCatalog.get(name)
    # What register_pascal_voc records; no other detectron2 registration sets both.
    if meta.get("dirname") is None or meta.get("split") is None:
        return None
    return meta


def is_voc_dataset(name) -> bool:
    """Whether ``name`` was registered in the PASCAL VOC format (``register_pascal_voc``)."""
    meta = _voc_meta(name)
    return meta is not None and (meta.get("evaluator_type", "pascal_voc") == "pascal_voc")


def voc_layout_problem(name) -> Optional[str]:
    """None if the VOC dataset ``name`` has its folders and split file (or is no VOC dataset);
    else what is missing, naming the first missing folder or file."""
    if not is_voc_dataset(name):
        return None
    meta = _voc_meta(name)
    root = os.path.abspath(meta.dirname)
    if not os.path.isdir(root):
        return f"folder '{root}' does not exist"
    for folder in VOC_FOLDERS:
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            return f"folder '{path}' does not exist"
    split_file = os.path.join(root, "ImageSets", "Main", meta.split + ".txt")
    if not os.path.isfile(split_file):
        return f"the image list '{split_file}' does not exist"
    return None
