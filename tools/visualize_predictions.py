#!/usr/bin/env python
"""
Draws a trained model's detections on the first images of its test dataset into one PNG.

    python tools/visualize_predictions.py --config-file CFG --checkpoint out/model_final.pth \
        --output out/predictions.png [--num-images 6] [--score-thresh 0.4] [opts ...]

``--indices 3,7`` picks images of the test dataset by position instead; ``--ground-truth``
puts each image's annotated boxes (green) left of its detections; ``--boxes-only`` leaves out
the class names and scores (dense scenes).
"""
import argparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
from PIL import Image

import hpf.data  # noqa: F401  registers the project's datasets
from hpf.config import apply_overrides


def tile(images, cols):
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    rows = (len(images) + cols - 1) // cols
    canvas = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * h : r * h + im.shape[0], c * w : c * w + im.shape[1]] = im
    return canvas


GREEN, RED = (0.1, 0.9, 0.1), (1.0, 0.2, 0.2)


def draw_boxes(rgb, metadata, boxes, color):
    """`boxes` (N x 4, XYXY) in one colour, without labels."""
    return Visualizer(rgb, metadata).overlay_instances(
        boxes=boxes, assigned_colors=[color] * len(boxes)).get_image()


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--score-thresh", type=float, default=0.4)
    parser.add_argument("--indices", default=None,
                        help="comma-separated positions in the test dataset (default: the first "
                        "--num-images)")
    parser.add_argument("--ground-truth", action="store_true",
                        help="draw the annotated boxes left of the detections")
    parser.add_argument("--boxes-only", action="store_true", help="no class names or scores")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()

    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(cfg.train.device).eval()
    DetectionCheckpointer(model).load(args.checkpoint)

    names = cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else names[0]
    records = DatasetCatalog.get(name)
    if args.indices:
        try:
            indices = [int(i) for i in args.indices.split(",")]
        except ValueError:
            parser.error(f"--indices {args.indices!r}: expected comma-separated integers")
        bad = [i for i in indices if not 0 <= i < len(records)]
        if bad:
            parser.error(f"--indices {bad}: {name} has {len(records)} images (0-{len(records) - 1})")
        records = [records[i] for i in indices]
    else:
        records = records[: args.num_images]
    metadata = MetadataCatalog.get(name)
    fmt = cfg.dataloader.test.mapper.image_format

    drawn = []
    for record in records:
        image = read_image(record["file_name"], format=fmt)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            instances = model([{"image": tensor, "height": image.shape[0],
                                "width": image.shape[1]}])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= args.score_thresh]
        rgb = image[:, :, ::-1] if fmt == "BGR" else image
        if args.ground_truth:
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                     for a in record.get("annotations", [])]
            drawn.append(draw_boxes(rgb, metadata, np.array(boxes).reshape(-1, 4), GREEN))
        if args.boxes_only:
            drawn.append(draw_boxes(rgb, metadata, instances.pred_boxes.tensor.numpy(), RED))
        else:
            drawn.append(Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image())
    Image.fromarray(tile(drawn, cols=2 if args.ground_truth else 3)).save(args.output)
    what = "ground truth and detections" if args.ground_truth else "detections"
    print(f"Wrote {what} (score >= {args.score_thresh}) on {len(records)} images of {name} "
          f"to {args.output}")


if __name__ == "__main__":
    main()
