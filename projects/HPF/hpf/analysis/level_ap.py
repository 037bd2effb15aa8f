"""
Level-wise AP of a dense detector (the HPF paper's Table 3 and its AP-IoU curves per level):
the validation set is split by pyramid level, and each level is evaluated with COCO's box AP
on its own subset.

For a level l:

* the ground truths of l are those the detector's own assignment (``label_anchors``: ATSS,
  FCOS's scale ranges, RetinaNet's IoU matching) puts on l: each ground truth goes to the level
  holding most of its positive anchors (ties: the lower level). Ground truths without any
  positive anchor belong to no level; they are counted (``unassigned``), not evaluated;
* the detections of l are the detector's own inference (score threshold, top-k candidates,
  NMS, detections per image) run on the predictions of l only;
* AP, AP50, AP75 and the AP at each IoU threshold 0.50, 0.55, ..., 0.95 come from COCO's
  evaluation (pycocotools, area "all", 100 detections per image) of those detections against
  those ground truths, on every image of the set. A detection of l that finds an object of
  another level is a false positive of l. Crowd regions are ignore regions on every level, as
  in COCO's evaluation.

Ground truth is assigned at the network's input resolution (after the test resize, as training
labels anchors) and evaluated, with the detections, in the original image coordinates (as
detectron2's ``detector_postprocess`` scales them).
"""
import contextlib
import copy
import io
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BoxMode, Boxes, Instances

__all__ = [
    "IOU_THRESHOLDS",
    "ImageLevels",
    "level_names",
    "gt_levels_from_labels",
    "assign_gt_levels",
    "level_detections",
    "collect_image_levels",
    "coco_box_ap",
    "level_ap",
]

# COCO's AP thresholds (COCOeval's own, rounded), those of the paper's AP-IoU curves.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass
class ImageLevels:
    """
    One image of the evaluation set, split by level. Boxes are XYXY in the original image
    coordinates.

    Attributes:
        image_id: any hashable id (the dataset's ``image_id``).
        height, width: the original image size.
        gt_boxes: ``[M, 4]`` ground-truth boxes (no crowd regions).
        gt_classes: ``[M]`` contiguous class ids.
        gt_levels: ``[M]`` level index of each ground truth, -1 for none (unassigned).
        crowd_boxes: ``[C, 4]`` crowd regions (ignore regions of the evaluation on every
            level, for detections of their class).
        crowd_classes: ``[C]`` their classes.
        detections: one ``Instances`` per level (``pred_boxes``, ``scores``, ``pred_classes``).
    """

    image_id: object
    height: int
    width: int
    gt_boxes: torch.Tensor
    gt_classes: torch.Tensor
    gt_levels: torch.Tensor
    crowd_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    crowd_classes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    detections: List[Instances] = field(default_factory=list)


def level_names(model) -> List[str]:
    """The names of the detector's levels, from its ``head_in_features``: "p3" -> "P3"."""
    return [str(f).upper() for f in model.head_in_features]


def gt_levels_from_labels(gt_labels, matched_boxes, gt_boxes, gt_classes, num_anchors_per_level,
                          num_classes):
    """
    The level of each ground truth of one image from the output of ``label_anchors``.

    ``label_anchors`` gives each positive anchor the class and the box of its ground truth, not
    its index: the ground truth of an anchor is recovered as the one whose box and class equal
    the anchor's exactly (the matched box is a copy of it). Identical ground truths (same box,
    same class) cannot be told apart: their anchors go to the first of them.

    Args:
        gt_labels: ``[R]`` label of each anchor: class, ``num_classes`` = background, -1 =
            ignored.
        matched_boxes: ``[R, 4]`` matched ground-truth box of each anchor (read at positives).
        gt_boxes: ``[M, 4]`` the ground-truth boxes given to ``label_anchors``.
        gt_classes: ``[M]`` their classes.
        num_anchors_per_level: the number of anchors of each level, in the order of ``R``.
        num_classes: the detector's number of classes.

    Returns:
        levels: ``[M]`` long, the level holding most of each ground truth's positive anchors
            (ties: the lower level), -1 where it has none.
        counts: ``[M, L]`` long, the positive anchors of each ground truth on each level.
    """
    num_levels = len(num_anchors_per_level)
    num_gt = len(gt_boxes)
    device = gt_labels.device
    counts = torch.zeros(num_gt, num_levels, dtype=torch.long, device=device)
    if num_gt == 0:
        return torch.zeros(0, dtype=torch.long, device=device), counts
    if len(gt_labels) != sum(num_anchors_per_level):
        raise ValueError(f"{len(gt_labels)} anchor labels for {sum(num_anchors_per_level)} "
                         f"anchors ({list(num_anchors_per_level)} per level)")
    anchor_level = torch.repeat_interleave(
        torch.arange(num_levels, device=device),
        torch.as_tensor(list(num_anchors_per_level), device=device),
    )
    pos = (gt_labels >= 0) & (gt_labels != num_classes)
    same = (matched_boxes[pos][:, None, :] == gt_boxes[None, :, :].to(matched_boxes)).all(dim=2)
    same &= gt_labels[pos][:, None] == gt_classes[None, :].to(gt_labels)
    found = same.any(dim=1)
    if not bool(found.all()):
        raise RuntimeError(f"{int((~found).sum())} positive anchors are matched to a box that is "
                           f"none of the ground truths given to label_anchors")
    gt_index = same.to(torch.uint8).argmax(dim=1)  # the first equal ground truth
    counts.index_put_((gt_index, anchor_level[pos]), torch.ones_like(gt_index), accumulate=True)
    # argmax gives the first maximum: ties go to the lower level.
    levels = counts.argmax(dim=1)
    levels[counts.sum(dim=1) == 0] = -1
    return levels, counts


def assign_gt_levels(model, anchors: List[Boxes], gt_instances: List[Instances]):
    """
    Per image, the level of each ground truth by the detector's own ``label_anchors`` (see
    :func:`gt_levels_from_labels`).

    Args:
        model: a detectron2 ``DenseDetector`` (RetinaNet, FCOS, ATSS and their ``hpf.modeling``
            forms).
        anchors: per level, the anchors of the images (``model.anchor_generator(features)``).
        gt_instances: per image, ``gt_boxes`` and ``gt_classes`` at the network's input
            resolution.

    Returns:
        list[(levels [M], counts [M, L])], one pair per image.
    """
    sizes = [len(a) for a in anchors]
    out = [None] * len(gt_instances)
    nonempty = [i for i, inst in enumerate(gt_instances) if len(inst) > 0]
    if nonempty:
        gt_labels, matched = model.label_anchors(anchors, [gt_instances[i] for i in nonempty])
        for i, labels, boxes in zip(nonempty, gt_labels, matched):
            inst = gt_instances[i]
            out[i] = gt_levels_from_labels(labels, boxes, inst.gt_boxes.tensor, inst.gt_classes,
                                           sizes, model.num_classes)
    for i in range(len(gt_instances)):
        if out[i] is None:
            out[i] = (torch.zeros(0, dtype=torch.long),
                      torch.zeros(0, len(sizes), dtype=torch.long))
    return out


def level_detections(model, images, features, predictions) -> List[List[Instances]]:
    """
    The detections of each level alone, by the detector's own ``forward_inference``: the
    classification logits of every other level are set to -inf (score 0, under any
    threshold >= 0), so that the threshold, the top-k per level, the NMS and the detections per
    image act on this level's candidates only, as in the paper's level-wise evaluation.

    Args:
        images: the ``ImageList`` of ``model.preprocess_image``.
        features: the head's input features (one tensor per level, ``head_in_features``).
        predictions: ``model.head(features)``; its first output is the classification logits
            (RetinaNet, FCOS and ATSS heads).

    Returns:
        list over levels of the list over images of ``Instances`` at the input resolution.
    """
    thresh = getattr(model, "test_score_thresh", None)
    if thresh is not None and thresh < 0:
        raise ValueError(f"test_score_thresh={thresh} < 0: the other levels' scores of 0 would "
                         f"pass it; level-wise detections need a threshold >= 0")
    logits = predictions[0]
    out = []
    for level in range(len(features)):
        # Fresh copies: detectron2's inference applies sigmoid_ in place to views of them.
        masked = [[x.clone() if i == level else torch.full_like(x, -math.inf)
                   for i, x in enumerate(logits)]]
        masked += [[x.clone() for x in kind] for kind in predictions[1:]]
        out.append(model.forward_inference(images, features, masked))
    return out


def _gt_in_original(record):
    """(boxes [M, 4] XYXY, classes [M], crowd boxes [C, 4], crowd classes [C]) of a dataset
    dict."""
    boxes, classes, crowd, crowd_classes = [], [], [], []
    for ann in record.get("annotations", []):
        box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        if ann.get("iscrowd", 0):
            crowd.append(box)
            crowd_classes.append(int(ann["category_id"]))
        else:
            boxes.append(box)
            classes.append(int(ann["category_id"]))
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(classes, dtype=torch.long),
            torch.tensor(crowd, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(crowd_classes, dtype=torch.long))


@torch.no_grad()
def collect_image_levels(model, records: Sequence[dict], mapper) -> List[ImageLevels]:
    """
    Ground-truth levels and per-level detections of every image, one image per forward (as the
    test loader gives them).

    Args:
        model: a dense detector in eval mode.
        records: detectron2 dataset dicts with ``annotations`` (original coordinates).
        mapper: the test mapper (resize; it drops the annotations, which are read from
            ``records``).

    Returns:
        list[ImageLevels], in the order of ``records``.
    """
    out = []
    for record in records:
        gt_boxes, gt_classes, crowd, crowd_classes = _gt_in_original(record)
        inputs = mapper(copy.deepcopy(record))
        height = inputs.get("height", record.get("height"))
        width = inputs.get("width", record.get("width"))
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        anchors = model.anchor_generator(features)

        # The ground truth at the input resolution, clipped, empty boxes dropped: what the
        # training mapper gives label_anchors (annotations_to_instances, filter_empty_instances).
        h_in, w_in = images.image_sizes[0]
        scale = torch.tensor([w_in / width, h_in / height] * 2)
        boxes_in = Boxes(gt_boxes * scale)
        boxes_in.clip((h_in, w_in))
        keep = boxes_in.nonempty()
        inst = Instances((h_in, w_in), gt_boxes=boxes_in[keep].to(model.device),
                         gt_classes=gt_classes[keep].to(model.device))
        levels = torch.full((len(gt_boxes),), -1, dtype=torch.long)
        levels[keep] = assign_gt_levels(model, anchors, [inst])[0][0].cpu()

        detections = [
            detector_postprocess(per_image[0], height, width).to("cpu")
            for per_image in level_detections(model, images, features, predictions)
        ]
        out.append(ImageLevels(record.get("image_id", len(out)), height, width, gt_boxes,
                               gt_classes, levels, crowd, crowd_classes, detections))
    return out


def coco_box_ap(images: Sequence[dict], num_classes: int) -> Dict[str, object]:
    """
    COCO box AP (pycocotools) of one set of ground truths and detections.

    Args:
        images: per image a dict: ``height``, ``width``, ``gt_boxes`` ``[M, 4]`` XYXY,
            ``gt_classes`` ``[M]``, ``crowd_boxes`` ``[C, 4]`` and ``crowd_classes`` ``[C]``
            (optional: ignore regions), ``pred_boxes``
            ``[D, 4]`` XYXY, ``scores`` ``[D]``, ``pred_classes`` ``[D]``.
        num_classes: classes are ``0 .. num_classes - 1``.

    Returns:
        dict: ``AP``, ``AP50``, ``AP75`` and ``ap_per_iou`` (one per :data:`IOU_THRESHOLDS`) in
        %, area "all", 100 detections per image, the mean over the classes that have ground
        truth (as COCOeval); None without any ground truth. ``num_gt``: the ground truths (not
        crowd).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_images, annotations, results = [], [], []
    for image_id, image in enumerate(images, start=1):
        gt_images.append({"id": image_id, "height": int(image["height"]),
                          "width": int(image["width"])})
        crowd = (image.get("crowd_boxes", torch.zeros(0, 4)),
                 image.get("crowd_classes", torch.zeros(0, dtype=torch.long)), 1)
        for boxes, classes, iscrowd in ((image["gt_boxes"], image["gt_classes"], 0), crowd):
            boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).tolist()
            for box, c in zip(boxes, torch.as_tensor(classes).tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": iscrowd,
                })
        boxes = torch.as_tensor(image["pred_boxes"], dtype=torch.float64).tolist()
        for box, score, c in zip(boxes, torch.as_tensor(image["scores"]).tolist(),
                                 torch.as_tensor(image["pred_classes"]).tolist()):
            results.append({"image_id": image_id, "category_id": int(c) + 1, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    num_gt = sum(len(image["gt_boxes"]) for image in images)
    empty = {"AP": None, "AP50": None, "AP75": None,
             "ap_per_iou": [None] * len(IOU_THRESHOLDS), "num_gt": num_gt}
    if num_gt == 0:
        return empty

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": gt_images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes fails on an empty list; no detections: AP 0
            dt = COCO()
            dt.dataset = {"images": gt_images, "annotations": [],
                          "categories": gt.dataset["categories"]}
            dt.createIndex()
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: [IoU threshold, recall point, class, area range, max detections]; area range 0
    # is "all", max-detections index 2 is 100; -1 marks classes without ground truth.
    precision = evaluation.eval["precision"][:, :, :, 0, 2]
    valid = precision > -1
    if not valid.any():
        return empty

    def mean(p):
        return 100.0 * float(p[p > -1].mean())

    per_iou = [mean(p) for p in precision]
    return {"AP": mean(precision), "AP50": per_iou[0], "AP75": per_iou[5],
            "ap_per_iou": per_iou, "num_gt": num_gt}


def level_ap(images: Sequence[ImageLevels], num_levels: int, num_classes: int,
             names: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, object]]:
    """
    The level-wise AP: for each level, :func:`coco_box_ap` of that level's ground truths and
    detections over every image.

    Args:
        images: what :func:`collect_image_levels` returns.
        num_levels: the detector's number of levels.
        num_classes: its number of classes.
        names: the level names (default "0", "1", ...).

    Returns:
        {level name: :func:`coco_box_ap`'s dict}, in level order.
    """
    names = list(names) if names is not None else [str(i) for i in range(num_levels)]
    if len(names) != num_levels:
        raise ValueError(f"{len(names)} level names for {num_levels} levels")
    out = {}
    for level, name in enumerate(names):
        subset = []
        for image in images:
            if len(image.detections) != num_levels:
                raise ValueError(f"image {image.image_id}: detections of "
                                 f"{len(image.detections)} levels, expected {num_levels}")
            on_level = image.gt_levels == level
            det = image.detections[level]
            subset.append({
                "height": image.height, "width": image.width,
                "gt_boxes": image.gt_boxes[on_level], "gt_classes": image.gt_classes[on_level],
                "crowd_boxes": image.crowd_boxes, "crowd_classes": image.crowd_classes,
                "pred_boxes": det.pred_boxes.tensor, "scores": det.scores,
                "pred_classes": det.pred_classes,
            })
        out[name] = coco_box_ap(subset, num_classes)
    return out
