"""DenseDetectorWithTTA: boxes of every scale / flip pass mapped back into the original image,
the merge (candidates pooled, class-wise NMS, top-k), flip consistency on a real (tiny) ATSS,
and the hook in train_net.py's evaluation."""
import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

from conftest import DEMO_CONFIG, load_tool
from hpf.modeling import DenseDetectorWithTTA
from test_dense_detectors import batch, tiny_model_cfg

# A 60 x 90 image whose bright block spans x in [10, 30), y in [20, 50): not mirror-symmetric.
TRUE_BOX = [10.0, 20.0, 30.0, 50.0]


def block_image():
    image = torch.zeros(3, 60, 90, dtype=torch.uint8)
    image[:, 20:50, 10:30] = 255
    return image


class BrightBlockDetector(nn.Module):
    """Stands in for a dense detector: one detection of class 1, the bounding box of the bright
    pixels of its input, returned in (height, width) coordinates as detector_postprocess does.
    Records the input size and the NMS / cap settings of every call."""

    def __init__(self):
        super().__init__()
        self.test_nms_thresh, self.max_detections_per_image = 0.5, 100
        self.calls = []

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]
            self.calls.append(((h, w), self.test_nms_thresh, self.max_detections_per_image))
            ys, xs = torch.nonzero(x["image"][0] > 127, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            sx, sy = x["width"] / w, x["height"] / h
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes((box * torch.tensor([sx, sy, sx, sy]))[None])
            inst.scores = torch.tensor([0.9 - 0.1 * len(self.calls)])
            inst.pred_classes = torch.tensor([1])
            outputs.append({"instances": inst})
        return outputs


@pytest.mark.parametrize("loader_scale", [1, 2], ids=["original", "loader_halved"])
def test_every_pass_maps_back_into_the_original_image(loader_scale):
    # loader_halved: the image reaching the model is half the original 120 x 180 (as after a
    # test mapper's resize); boxes must come back in the original's coordinates.
    detector = BrightBlockDetector()
    tta = DenseDetectorWithTTA(detector, sizes=[(60, 200), (120, 150)], flip=True,
                               nms_thresh=1.0).eval()  # NMS 1.0: keep every pass's box
    inputs = {"image": block_image(), "height": 60 * loader_scale, "width": 90 * loader_scale}
    out = tta([inputs])[0]["instances"]
    # Sizes from the original's 2:3 shape, whatever the input's: (60, 200) is 60 x 90;
    # (120, 150): 120 x 180 would exceed 150, so 100 x 150. Each also flipped; during the
    # passes the detector's NMS is off and its cap lifted, then restored.
    assert [c[0] for c in detector.calls] == [(60, 90)] * 2 + [(100, 150)] * 2
    assert all(c[1] == 1.0 and c[2] >= 10**6 for c in detector.calls)
    assert (detector.test_nms_thresh, detector.max_detections_per_image) == (0.5, 100)
    assert out.image_size == (60 * loader_scale, 90 * loader_scale)
    assert len(out) == 4
    expected = torch.tensor(TRUE_BOX) * loader_scale
    # Bilinear resizing blurs the block's edge by about a pixel at the pass's scale.
    torch.testing.assert_close(out.pred_boxes.tensor, expected.expand(4, 4), atol=2.0, rtol=0)


def test_merge_is_class_wise_nms_and_top_k():
    detector = BrightBlockDetector()
    inputs = {"image": block_image(), "height": 60, "width": 90}
    # Four overlapping boxes of one class: NMS keeps the best (the first pass's 0.8).
    out = DenseDetectorWithTTA(detector, sizes=[(60, 200), (120, 150)]).eval()([inputs])
    inst = out[0]["instances"]
    assert len(inst) == 1 and inst.scores.item() == pytest.approx(0.8)
    torch.testing.assert_close(inst.pred_boxes.tensor[0], torch.tensor(TRUE_BOX))
    # Without NMS, the cap keeps the 3 best of the 4 passes, best first.
    detector.calls.clear()
    out = DenseDetectorWithTTA(detector, sizes=[(60, 200), (120, 150)], nms_thresh=1.0,
                               max_detections_per_image=3).eval()([inputs])
    torch.testing.assert_close(out[0]["instances"].scores, torch.tensor([0.8, 0.7, 0.6]))


@pytest.fixture(scope="module")
def tiny_atss():
    torch.manual_seed(0)
    cfg = tiny_model_cfg("atss")
    cfg.test_score_thresh = 0.0  # an untrained model: let every candidate through
    return instantiate(cfg).eval()


def _uint8(inputs):
    return dict(inputs, image=inputs["image"].to(torch.uint8))


def test_one_pass_at_the_input_size_keeps_the_models_best_detection(tiny_atss):
    # (Not the whole output: the model clips its boxes after its NMS, the merge sees them
    # clipped, as mmdetection's passes clip at decoding.)
    inputs = _uint8(batch((1,))[0])
    with torch.no_grad():
        plain = tiny_atss([inputs])[0]["instances"]
        tta = DenseDetectorWithTTA(tiny_atss, sizes=[(96, 200)], flip=False).eval()
        merged = tta([inputs])[0]["instances"]
    assert len(plain) == len(merged) == 100
    assert plain.scores[0] > plain.scores[1]  # a unique best
    torch.testing.assert_close(merged.pred_boxes.tensor[0], plain.pred_boxes.tensor[0])
    assert merged.scores[0] == plain.scores[0]
    assert merged.pred_classes[0] == plain.pred_classes[0]


def test_flip_consistency_and_boxes_inside_the_image(tiny_atss):
    # With flip on, the passes on an image and on its mirror are the same computations, so the
    # merged detections of the mirror are the mirrored detections of the image.
    inputs = _uint8(batch((1,))[0])
    mirrored = dict(inputs, image=inputs["image"].flip(-1))
    tta = DenseDetectorWithTTA(tiny_atss, sizes=[(96, 200)], flip=True).eval()
    with torch.no_grad():
        a, b = (tta([x])[0]["instances"] for x in (inputs, mirrored))
    assert len(a) == len(b) == 100
    width = inputs["width"]
    boxes_b = b.pred_boxes.tensor
    mirror_of_b = torch.stack([width - boxes_b[:, 2], boxes_b[:, 1], width - boxes_b[:, 0],
                               boxes_b[:, 3]], dim=1)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.pred_boxes.tensor, mirror_of_b, atol=1e-4, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)
    # A second, larger scale: the merged boxes still lie in the original image.
    tta = DenseDetectorWithTTA(tiny_atss, sizes=[(96, 200), (144, 200)]).eval()
    with torch.no_grad():
        boxes = tta([inputs])[0]["instances"].pred_boxes.tensor
    assert len(boxes) == 100
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= width and boxes[:, [1, 3]].max() <= 96


def test_bad_arguments():
    with pytest.raises(ValueError, match="test_nms_thresh"):
        DenseDetectorWithTTA(nn.Linear(1, 1), sizes=[(800, 1333)])
    with pytest.raises(ValueError, match="sizes"):
        DenseDetectorWithTTA(BrightBlockDetector(), sizes=[(800,)])
    tta = DenseDetectorWithTTA(BrightBlockDetector(), sizes=[(60, 90)])
    with pytest.raises(RuntimeError, match="inference"):
        tta.train()([{"image": block_image()}])


def test_train_net_evaluates_through_the_configured_wrapper(datasets_root, monkeypatch,
                                                           tmp_path):
    """do_test wraps the model when the config has test_time_augmentation (as the Swin-L
    mstest config), and the COCO evaluation runs on the merged detections."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    train_net = load_tool("train_net.py")

    cfg = LazyConfig.load(DEMO_CONFIG)
    cfg.dataloader.test.dataset.names = "shapes_tiny_val"
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.evaluator.output_dir = None
    cfg.train.output_dir = str(tmp_path)
    cfg.dataloader.test.mapper.augmentations = []
    cfg.test_time_augmentation = L(DenseDetectorWithTTA)(sizes=[(64, 96)], flip=True)
    merged_images = []
    merged = DenseDetectorWithTTA._merged
    monkeypatch.setattr(DenseDetectorWithTTA, "_merged",
                        lambda self, x: merged_images.append(x["image"].shape) or merged(self, x))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    results = train_net.do_test(cfg, model)
    assert set(results["bbox"]) >= {"AP", "AP50"}
    assert len(merged_images) == 8  # every image of shapes_tiny_val went through the wrapper
