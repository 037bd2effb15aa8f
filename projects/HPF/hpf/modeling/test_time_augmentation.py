"""
Multi-scale + flip test-time augmentation for the dense detectors (RetinaNet, FCOS, ATSS):
the test setting of HPF Table 9's best row (Swin-L, 55.1 AP test-dev). detectron2's
``GeneralizedRCNNWithTTA`` only serves R-CNNs.
"""
import contextlib
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from detectron2.data.transforms import ResizeShortestEdge, ResizeTransform
from detectron2.layers import batched_nms, cat
from detectron2.structures import Boxes, Instances

__all__ = ["DenseDetectorWithTTA"]

# Per augmented pass, enough to keep every candidate that passes the detector's per-level top-k
# and score threshold.
_ALL_CANDIDATES = 10**9


class DenseDetectorWithTTA(nn.Module):
    """
    Runs a dense detector on each image at several sizes, each also flipped horizontally,
    maps the boxes back to the original image and merges them as mmdetection does for
    single-stage heads: the candidates of every pass (the detector's own top-k per level and
    score threshold, before NMS) are pooled, then class-wise NMS and the best
    ``max_detections_per_image`` are kept.

    Test only: the wrapped model is trained and checkpointed without it (see
    ``test_time_augmentation`` in the configs and ``train_net.py``'s ``do_test``).
    """

    def __init__(self, model: nn.Module, sizes: Sequence[Tuple[int, int]], flip: bool = True,
                 nms_thresh: float = None, max_detections_per_image: int = None):
        """
        Args:
            model: a detectron2 ``DenseDetector`` with ``test_nms_thresh`` and
                ``max_detections_per_image`` (hpf's RetinaNet, FCOS and ATSS).
            sizes: ``(shortest edge, longest edge at most)`` per scale; mmdetection's
                ``img_scale=(1200, 800)`` is ``(800, 1200)`` here.
            flip: also run every scale on the horizontally flipped image.
            nms_thresh, max_detections_per_image: of the merge; default the model's.
        """
        super().__init__()
        for name in ("test_nms_thresh", "max_detections_per_image"):
            if not hasattr(model, name):
                raise ValueError(f"{type(model).__name__} has no '{name}': "
                                 "DenseDetectorWithTTA needs a detectron2 DenseDetector")
        sizes = [tuple(int(v) for v in s) for s in sizes]
        if not sizes or any(len(s) != 2 or min(s) <= 0 for s in sizes):
            raise ValueError(f"sizes must be (shortest edge, longest edge) pairs, got {sizes}")
        self.model, self.sizes, self.flip = model, sizes, bool(flip)
        self.nms_thresh = model.test_nms_thresh if nms_thresh is None else nms_thresh
        self.max_detections_per_image = (model.max_detections_per_image
                                         if max_detections_per_image is None
                                         else max_detections_per_image)

    @contextlib.contextmanager
    def _candidates_only(self):
        """The model's NMS off (IoU never exceeds 1) and no cap on its detections: what each
        augmented pass returns are its candidates, merged by ``forward``."""
        saved = self.model.test_nms_thresh, self.model.max_detections_per_image
        self.model.test_nms_thresh, self.model.max_detections_per_image = 1.0, _ALL_CANDIDATES
        try:
            yield
        finally:
            self.model.test_nms_thresh, self.model.max_detections_per_image = saved

    def augmented_inputs(self, inputs: Dict) -> List[Tuple[Dict, bool]]:
        """(model input, flipped) per augmentation, resized from the input image to each size
        computed from the original ``height`` x ``width``."""
        image = inputs["image"]
        cur_h, cur_w = image.shape[-2:]
        height, width = inputs.get("height", cur_h), inputs.get("width", cur_w)
        hwc = image.permute(1, 2, 0).cpu().numpy()
        out = []
        for short, longest in self.sizes:
            new_h, new_w = ResizeShortestEdge.get_output_shape(height, width, short, longest)
            resized = ResizeTransform(cur_h, cur_w, new_h, new_w).apply_image(hwc)
            for flipped in (False, True) if self.flip else (False,):
                img = resized[:, ::-1] if flipped else resized
                tensor = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
                out.append(({"image": tensor, "height": height, "width": width}, flipped))
        return out

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        if self.training:
            raise RuntimeError("DenseDetectorWithTTA is for inference; train the wrapped model")
        return [{"instances": self._merged(inputs)} for inputs in batched_inputs]

    def _merged(self, inputs):
        boxes, scores, classes = [], [], []
        with self._candidates_only():
            for aug_input, flipped in self.augmented_inputs(inputs):
                # Detections in the original image's coordinates (detector_postprocess).
                result = self.model([aug_input])[0]["instances"]
                b = result.pred_boxes.tensor
                if flipped:
                    b = torch.stack([aug_input["width"] - b[:, 2], b[:, 1],
                                     aug_input["width"] - b[:, 0], b[:, 3]], dim=1)
                boxes.append(b)
                scores.append(result.scores)
                classes.append(result.pred_classes)
        boxes, scores, classes = cat(boxes), cat(scores), cat(classes)
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)
        keep = keep[: self.max_detections_per_image]
        merged = Instances((aug_input["height"], aug_input["width"]))
        merged.pred_boxes = Boxes(boxes[keep])
        merged.scores = scores[keep]
        merged.pred_classes = classes[keep]
        return merged
