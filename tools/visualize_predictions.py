#!/usr/bin/env python
"""
Draws a trained model's detections on the first images of its test dataset into one PNG.

    python tools/visualize_predictions.py --config-file CFG --checkpoint out/model_final.pth \
        --output out/predictions.png [--num-images 6] [--score-thresh 0.4] [opts ...]
"""
import argparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--score-thresh", type=float, default=0.4)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()

    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(cfg.train.device).eval()
    DetectionCheckpointer(model).load(args.checkpoint)

    names = cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else names[0]
    records = DatasetCatalog.get(name)[: args.num_images]
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
        drawn.append(Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image())
    Image.fromarray(tile(drawn, cols=3)).save(args.output)
    print(f"Wrote detections (score >= {args.score_thresh}) on {len(drawn)} images of {name} "
          f"to {args.output}")


if __name__ == "__main__":
    main()
