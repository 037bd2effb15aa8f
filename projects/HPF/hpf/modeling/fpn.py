from detectron2.modeling.backbone.fpn import LastLevelP6P7

__all__ = ["LastLevelP6P7NoReLU"]


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """P6 = conv(x), P7 = conv(P6) without the ReLU detectron2 puts before P7: mmdetection's
    ATSS / HPF FPN (``add_extra_convs='on_output'``, ``relu_before_extra_convs=False``)."""

    def forward(self, x):
        p6 = self.p6(x)
        return [p6, self.p7(p6)]
