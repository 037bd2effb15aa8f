"""Checks that COCO is where detectron2 looks for it: ``python -m hpf.data.check_coco``."""
import argparse
import json
import os
import sys

from detectron2.data import MetadataCatalog
import detectron2.data  # noqa: F401  registers the builtin COCO splits

SPLITS = ("coco_2017_train", "coco_2017_val", "coco_2017_test-dev")


def check_split(name):
    """Returns a list of problems (empty when the split is complete)."""
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.json_file, meta.image_root
    if not os.path.isfile(json_file):
        return [f"{name}: missing annotation file {json_file}"]
    if not os.path.isdir(image_root):
        return [f"{name}: missing image folder {image_root}"]
    with open(json_file) as f:
        images = json.load(f)["images"]
    present = set(os.listdir(image_root))
    missing = [im["file_name"] for im in images if im["file_name"] not in present]
    if missing:
        return [f"{name}: {len(missing)} of {len(images)} images missing from {image_root}, "
                f"e.g. {missing[0]}"]
    print(f"{name}: ok, {len(images)} images in {image_root}")
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    args = parser.parse_args(argv)
    root = os.path.abspath(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    print(f"DETECTRON2_DATASETS = {root}")
    problems = [p for name in args.splits for p in check_split(name)]
    for p in problems:
        print("ERROR", p)
    if problems:
        print("See datasets/README.md for the expected layout.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
