"""
detectron2's ``ROIPooler`` with the RoI coordinates kept in float32 under autocast.

detectron2's ``ROIAlign`` casts the boxes to the dtype of the features before pooling. Under
bfloat16 autocast (8 significant bits) a coordinate of a 1333-pixel image is then rounded to a
multiple of 4-8 pixels, one to two cells of P2; float16 (11 bits) rounds it to 0.5-1 pixel.
Here the features are pooled in float32 at the float32 boxes (what torchvision's autocast rule
for ``roi_align`` does when it is given float32 boxes) and returned in the features' dtype.
Outside autocast nothing changes.
"""
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler as _D2ROIPooler
from torchvision.ops import roi_align

__all__ = ["Float32BoxesROIAlign", "ROIPooler"]


class Float32BoxesROIAlign(ROIAlign):
    """detectron2's ``ROIAlign``; under autocast the features are pooled in float32 at the
    float32 boxes, and returned in their own dtype."""

    def forward(self, input, rois):
        device_type = input.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        if input.is_quantized:
            input = input.dequantize()
        with torch.autocast(device_type, enabled=False):
            out = roi_align(input.float(), rois.float(), self.output_size, self.spatial_scale,
                            self.sampling_ratio, self.aligned)
        return out.to(input.dtype)


class ROIPooler(_D2ROIPooler):
    """detectron2's ``ROIPooler`` (same arguments) whose ``ROIAlign`` / ``ROIAlignV2`` levels
    keep the boxes in float32 under autocast (:class:`Float32BoxesROIAlign`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for i, pooler in enumerate(self.level_poolers):
            if type(pooler) is ROIAlign:
                self.level_poolers[i] = Float32BoxesROIAlign(
                    pooler.output_size, pooler.spatial_scale, pooler.sampling_ratio,
                    aligned=pooler.aligned,
                )
