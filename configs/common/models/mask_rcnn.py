from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import MaskRCNNConvUpsampleHead

from hpf.modeling import ROIPooler

from .faster_rcnn import model

# Mask R-CNN R-50-FPN: Faster R-CNN plus detectron2's mask branch (4 convs + deconv, 14x14 RoIs).
model.roi_heads.update(
    mask_in_features=["p2", "p3", "p4", "p5"],
    mask_pooler=L(ROIPooler)(
        output_size=14,
        scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    ),
    mask_head=L(MaskRCNNConvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, width=14, height=14),
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256, 256],
    ),
)
