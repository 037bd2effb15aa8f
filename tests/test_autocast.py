"""
Mixed precision: every loss of ``hpf.losses`` and every detector config trains (forward and
backward) under autocast. Everything runs on the CPU with bfloat16, and again with CUDA
float16 when a GPU is there (marker ``cuda``; skipped without one).

* Losses: their inputs come out of a Linear layer run under autocast (low precision, as a
  detector head's outputs) and the loss is called under autocast too. The loss must equal the
  float32 loss of the same values (losses compute in float32), stay close to the loss of the
  same layer run in float32 (a tolerance from the mantissa, see ``model_rtol``), have finite
  gradients, and keep its statistics in float32: HPF's gamma_ad / alpha_ad, GHM's histogram
  EMA, Sampling-Free's guided ratio and scaled loss, every module buffer.
* Detectors: the configs/Shapes models as configured (CPU-sized), and one config of every
  distinct detector of configs/COCO-Detection, configs/PascalVOC-Detection and
  configs/NeonTrees, built as test_e2e_robustness builds them (a tiny from-scratch backbone;
  heads, matchers, losses, samplers, priors and thresholds the config's): one training step on
  a small synthetic batch, with finite float32 losses, finite gradients and the statistics
  buffers (foreground counts, guided ratios, GHM EMA) kept in their dtype; a dense detector's
  losses (but GHM's and OHEM's) are the float32 model's within ``model_rtol``. The configs left
  out differ only in backbone, schedule or data; the backbones themselves (ResNet, ResNeXt,
  deformable convolution, Swin) are checked one by one.
* RoI pooling: ``hpf.modeling.ROIPooler`` pools low-precision features at float32 boxes.
"""
import glob
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.poolers import ROIPooler as D2ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from conftest import REPO, synthetic_batch
from hpf.losses import (
    FocalLoss,
    GHMCLoss,
    GHMRLoss,
    GuidedLossScale,
    OHEMLoss,
    ProgressiveFocalLoss,
    ProgressiveQualityFocalLoss,
    ProgressiveVarifocalLoss,
    QualityFocalLoss,
    SamplingFreeCELoss,
    VarifocalLoss,
    guided_loss_scale,
    progressive_focus_params,
    quality_focal_loss,
    sampling_free_ce_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)
from hpf.modeling import ROIPooler
from hpf.modeling.priors import foreground_stats_modules
from test_e2e_robustness import CONFIGS as E2E_CONFIGS
from test_e2e_robustness import _detector_signature, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def ieee_float32():
    """The float32 references in IEEE float32: CUDA convolutions default to TF32, whose
    10-bit mantissa is as coarse as float16's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

DEVICES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ]),
]

# The same values in float32 give the same loss: the losses cast their inputs to float32 and
# compute in it, so only float32 rounding (summation order) may differ. Arithmetic in bfloat16
# / float16 would be off by ~2^-8 / 2^-11 relative, far outside this.
SAME_RTOL = 1e-5


def model_rtol(dtype):
    """Relative tolerance between the layer run under autocast and run in float32, for the
    loss and for the layer's weight gradient (in norm).

    A low-precision logit comes from inputs and weights rounded to the dtype's significant
    bits (8 for bfloat16, 11 for float16; unit roundoff u = 2^-8 / 2^-11) and is rounded
    again: a few u relative. The losses are smooth with a relative sensitivity of order one
    to their logits, and the errors of many entries partly cancel in the sums; the weight
    gradient is rounded once more by the low-precision backward. 2 eps = 4 u (1.6% for
    bfloat16, 0.2% for float16) bounds both with room (about 0.2 eps and 0.5 eps seen).
    """
    return 2 * torch.finfo(dtype).eps


# GHM's bins and OHEM's ranks are discontinuous in the logits: one entry crossing a bin edge
# changes every GHM weight (they divide by the number of non-empty bins), one rank swap
# changes OHEM's kept set. Their loss moves by a step, not by a tolerance, when the layer runs
# in float32; their float32 arithmetic is checked on the same values.
DISCONTINUOUS = {"ghmc", "ghmc_all_levels", "ghmc_no_ema", "ohem", "ghmr"}


def grad_tolerances(dtype):
    """rtol / atol between a gradient that autograd rounded to ``dtype`` (the gradient of
    low-precision logits) and the float32 one: one rounding, and float16's subnormal
    spacing for the tiny gradients of a loss averaged over many entries."""
    info = torch.finfo(dtype)
    return dict(rtol=info.eps, atol=info.smallest_normal * info.eps)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

NUM_IMAGES, NUM_CLASSES, FEATURES = 2, 4, 16
ANCHORS_PER_LEVEL = (96, 24, 6)


class Head:
    """A Linear layer over random per-level features ``[B, A_l, FEATURES]``: its outputs under
    autocast (``low``, low precision, what a detector head gives a loss under mixed precision)
    and without (``full``, float32), and the gradients of its weight."""

    def __init__(self, device, out_dim, seed, bias):
        gen = torch.Generator().manual_seed(seed)
        self.features = [torch.randn(NUM_IMAGES, n, FEATURES, generator=gen).to(device)
                         for n in ANCHORS_PER_LEVEL]
        self.layer = torch.nn.Linear(FEATURES, out_dim).to(device)
        with torch.no_grad():  # logits of a few units around a prior-like bias
            self.layer.weight.copy_(torch.randn(out_dim, FEATURES, generator=gen) * 0.5)
            self.layer.bias.fill_(bias)

    def outputs(self, device, dtype=None):
        """Per-level outputs (under autocast to ``dtype`` if given), each keeping its grad."""
        self.layer.zero_grad()
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            outs = [self.layer(f) for f in self.features]
        for out in outs:
            out.retain_grad()
        return outs


def binary_targets(gen, logits):
    """One-hot rows for about 10% of the anchors, zeros elsewhere."""
    targets = []
    for x in logits:
        positive = torch.rand(x.shape[:-1], generator=gen) < 0.1
        classes = torch.randint(0, x.shape[-1], x.shape[:-1], generator=gen)
        one_hot = torch.nn.functional.one_hot(classes, x.shape[-1]).float()
        targets.append((one_hot * positive.unsqueeze(-1)).to(x.device))
    return targets


def quality_targets(gen, logits):
    """IoU-like scores in [0.1, 1) at the positives of :func:`binary_targets`."""
    return [t * (0.1 + 0.9 * torch.rand(t.shape, generator=gen)).to(t.device)
            for t in binary_targets(gen, logits)]


def valid_masks(gen, logits):
    """Per-anchor masks with about 10% of the anchors ignored."""
    return [(torch.rand(x.shape[:-1], generator=gen) > 0.1).to(x.device) for x in logits]


def _level_loss(module, valid):
    """A ClassificationLoss called as the detectors call it: per-level ``[B, A_l, C]``."""
    def run(logits, targets, masks):
        num_pos = sum(float((t > 0).any(-1).sum()) for t in targets)
        return module(logits, targets, max(num_pos, 1.0), masks if valid else None)
    return run


def _flat_loss(fn, **kwargs):
    """A loss function of ``[N, C]`` logits, summed: all levels and images as one tensor."""
    def run(logits, targets, masks):
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in logits])
        y = torch.cat([t.reshape(-1, t.shape[-1]) for t in targets])
        return fn(x, y, **kwargs)
    return run


def _flat_with_mask(fn):
    """:func:`_flat_loss` for a function that takes the valid mask (and counts its own
    positives as normalizer)."""
    def run(logits, targets, masks):
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in logits])
        y = torch.cat([t.reshape(-1, t.shape[-1]) for t in targets])
        return fn(x, y, valid=torch.cat([m.reshape(-1) for m in masks]))
    return run


def _box_loss(module):
    """A BoxRegressionLoss on the positives' deltas, one ``[P_l, 4]`` tensor per level."""
    def run(deltas, targets, masks):
        return module([d[m] for d, m in zip(deltas, masks)], [t[m] for t, m in zip(targets, masks)])
    return run


def _progressive_stats(module):
    return {"gamma_ad": module.last_gamma, "alpha_ad": module.last_alpha}


def _ghm_stats(module):
    return {"acc_sum": module.acc_sum}


# id: (make the loss module or None, wrap it into run(outputs, targets, masks), targets,
#      statistics of the module after the call)
LOSSES = {
    "focal": (FocalLoss, lambda m: _level_loss(m, True), binary_targets, None),
    "qfl": (QualityFocalLoss, lambda m: _level_loss(m, True), quality_targets, None),
    "vfl": (VarifocalLoss, lambda m: _level_loss(m, True), quality_targets, None),
    "hpf_level": (lambda: ProgressiveFocalLoss(sampling="level"),
                  lambda m: _level_loss(m, True), binary_targets, _progressive_stats),
    "hpf_all": (lambda: ProgressiveFocalLoss(sampling="all"),
                lambda m: _level_loss(m, True), binary_targets, _progressive_stats),
    "hpf_image": (lambda: ProgressiveFocalLoss(sampling="image"),
                  lambda m: _level_loss(m, False), binary_targets, _progressive_stats),
    "hpf_log_mean": (lambda: ProgressiveFocalLoss(estimator="log_mean"),
                     lambda m: _level_loss(m, True), binary_targets, _progressive_stats),
    "pf_qfl": (ProgressiveQualityFocalLoss, lambda m: _level_loss(m, True), quality_targets,
               _progressive_stats),
    "pf_vfl": (lambda: ProgressiveVarifocalLoss(w=1.5), lambda m: _level_loss(m, True),
               quality_targets, _progressive_stats),
    "ghmc": (GHMCLoss, lambda m: _level_loss(m, True), binary_targets, _ghm_stats),
    "ghmc_all_levels": (lambda: GHMCLoss(per_level=False), lambda m: _level_loss(m, True),
                        binary_targets, _ghm_stats),
    "ghmc_no_ema": (lambda: GHMCLoss(momentum=0.0), lambda m: _level_loss(m, False),
                    binary_targets, _ghm_stats),
    "ohem": (OHEMLoss, lambda m: _level_loss(m, True), binary_targets, None),
    "sampling_free_ce": (SamplingFreeCELoss, lambda m: _level_loss(m, True), binary_targets,
                         None),
    "ghmr": (GHMRLoss, _box_loss, None, _ghm_stats),
    "sigmoid_focal_loss": (None, lambda _: _flat_loss(sigmoid_focal_loss, reduction="sum"),
                           binary_targets, None),
    "quality_focal_loss": (None, lambda _: _flat_loss(quality_focal_loss, reduction="sum"),
                           quality_targets, None),
    "varifocal_loss": (None, lambda _: _flat_loss(varifocal_loss, reduction="sum"),
                       quality_targets, None),
    "sampling_free_ce_loss": (None, lambda _: _flat_with_mask(sampling_free_ce_loss),
                              binary_targets, None),
}


def _loss_inputs(name, device):
    """(head, targets, masks) of a loss: classification logits with a prior-like bias, or
    box deltas (GHM-R) against targets of about their size; the masks are the per-anchor
    valid masks (the positives for GHM-R)."""
    gen = torch.Generator().manual_seed(7)
    is_box = name == "ghmr"
    head = Head(device, 4 if is_box else NUM_CLASSES, seed=1, bias=0.0 if is_box else -2.0)
    shapes = head.outputs(device)
    if is_box:
        targets = [(torch.randn(x.shape, generator=gen) * 0.5).to(device) for x in shapes]
        masks = [(torch.rand(x.shape[:-1], generator=gen) < 0.2).to(device) for x in shapes]
    else:
        targets = LOSSES[name][2](gen, shapes)
        masks = valid_masks(gen, shapes)
    return head, targets, masks


def _float_buffers(module):
    return {n: b.dtype for n, b in module.named_buffers() if b.is_floating_point()}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("device,dtype", DEVICES)
def test_loss_under_autocast(name, device, dtype):
    make, wrap, _, stats = LOSSES[name]
    head, targets, masks = _loss_inputs(name, device)
    modules = [make() if make else None for _ in range(3)]
    low_module, same_module, full_module = modules
    buffers_before = _float_buffers(low_module) if low_module is not None else {}

    # The loss of the autocast outputs, called under autocast.
    low = head.outputs(device, dtype)
    assert all(x.dtype == dtype for x in low)
    with torch.autocast(device, dtype=dtype):
        loss = wrap(low_module)(low, targets, masks)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    low_grads = [x.grad for x in low]
    weight_grad = head.layer.weight.grad.clone()
    assert all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in low_grads)
    assert torch.isfinite(weight_grad).all()

    # The same values in float32: the same loss, gradients up to their rounding to dtype.
    same = [x.detach().float().requires_grad_() for x in low]
    same_loss = wrap(same_module)(same, targets, masks)
    same_loss.backward()
    torch.testing.assert_close(loss, same_loss, rtol=SAME_RTOL, atol=0.0)
    for g, ref in zip(low_grads, same):
        torch.testing.assert_close(g.float(), ref.grad, **grad_tolerances(dtype))

    # The layer in float32: the loss and the layer's gradient within the mantissa tolerance.
    if name not in DISCONTINUOUS:
        full = head.outputs(device)
        full_loss = wrap(full_module)(full, targets, masks)
        full_loss.backward()
        rtol = model_rtol(dtype)
        torch.testing.assert_close(loss, full_loss, rtol=rtol, atol=0.0)
        full_grad = head.layer.weight.grad
        assert (weight_grad - full_grad).norm() <= rtol * full_grad.norm()

    # Statistics in float32, the same as from the float32 values.
    if low_module is not None:
        assert _float_buffers(low_module) == buffers_before
        assert all(d == torch.float32 for d in buffers_before.values()), buffers_before
    if stats is not None:
        for key, value in stats(low_module).items():
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, stats(same_module)[key], rtol=SAME_RTOL, atol=0.0)


def _float32_loss_on(device, name):
    """(loss, the logits' gradients, statistics) of one loss in float32 on ``device``, from
    values made on the CPU."""
    make, wrap, _, stats = LOSSES[name]
    head, targets, masks = _loss_inputs(name, "cpu")
    module = make().to(device) if make else None
    xs = [x.detach().to(device).requires_grad_() for x in head.outputs("cpu")]
    loss = wrap(module)(xs, [t.to(device) for t in targets], [m.to(device) for m in masks])
    loss.backward()
    statistics = {k: v.cpu() for k, v in stats(module).items()} if stats else {}
    return loss.detach().cpu(), [x.grad.cpu() for x in xs], statistics


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_on_cuda_equals_cpu(name):
    """Each loss in float32 on CUDA and on the CPU, on the same values: the same loss,
    gradients and statistics up to float32 summation order."""
    (cpu_loss, cpu_grads, cpu_stats), (cuda_loss, cuda_grads, cuda_stats) = (
        _float32_loss_on(device, name) for device in ("cpu", "cuda"))
    torch.testing.assert_close(cuda_loss, cpu_loss, rtol=1e-5, atol=0.0)
    for cuda_grad, cpu_grad in zip(cuda_grads, cpu_grads):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=1e-5, atol=1e-8)
    assert cuda_stats.keys() == cpu_stats.keys()
    for key in cpu_stats:
        torch.testing.assert_close(cuda_stats[key], cpu_stats[key], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_progressive_focus_params_are_float32(device, dtype):
    head, targets, _ = _loss_inputs("hpf_level", device)
    x = torch.cat([t.reshape(-1, NUM_CLASSES) for t in head.outputs(device, dtype)])
    y = torch.cat([t.reshape(-1, NUM_CLASSES) for t in targets])
    with torch.autocast(device, dtype=dtype):
        gamma, alpha = progressive_focus_params(x, y)
    ref_gamma, ref_alpha = progressive_focus_params(x.detach().float(), y)
    assert gamma.dtype == alpha.dtype == torch.float32
    torch.testing.assert_close(gamma, ref_gamma, rtol=SAME_RTOL, atol=0.0)
    torch.testing.assert_close(alpha, ref_alpha, rtol=SAME_RTOL, atol=0.0)


def _low_precision_losses(device, dtype):
    """Three scalar losses in ``dtype``, as a loss computed in low precision would be, and the
    parameters they depend on."""
    head = Head(device, 3, seed=3, bias=1.0)
    with torch.autocast(device, dtype=dtype):
        out = head.layer(head.features[0])
    values = out.float().square().mean((0, 1)).to(dtype)  # rounded to dtype, as its losses
    assert values.dtype == dtype
    return head.layer.weight, {"loss_cls": values[0] * 7, "loss_box": values[1],
                               "loss_ctr": values[2]}


@pytest.mark.parametrize("mode", ["plain", "learned_scale", "guided_loss", "constant", "mean",
                                  "function"])
@pytest.mark.parametrize("device,dtype", DEVICES)
def test_guided_loss_scale_in_float32(mode, device, dtype):
    """The guided ratio, the scaled classification loss and its gradient are float32 and equal
    those of the same losses given in float32, also when the losses are low precision."""
    weight, losses = _low_precision_losses(device, dtype)
    same = {k: v.detach().float().requires_grad_() for k, v in losses.items()}

    def scaled(values):
        if mode == "function":
            with torch.autocast(device, dtype=dtype):
                return None, guided_loss_scale(values["loss_cls"], values["loss_box"], 2.0)
        kwargs = {
            "plain": dict(factor=2.0), "learned_scale": dict(mode="learned_scale"),
            "guided_loss": dict(mode="guided_loss", num_losses=3),
            "constant": dict(factor=0.5, mode="constant"), "mean": dict(guide="mean"),
        }[mode]
        module = GuidedLossScale(**kwargs).to(device)
        with torch.autocast(device, dtype=dtype):
            out = module(values, "loss_cls", "loss_box")
        return module, out["loss_cls"]

    module, cls = scaled(losses)
    ref_module, ref_cls = scaled(same)
    assert cls.dtype == torch.float32 and torch.isfinite(cls)
    torch.testing.assert_close(cls, ref_cls, rtol=SAME_RTOL, atol=0.0)
    if mode in ("plain", "function"):
        torch.testing.assert_close(cls, 2 * losses["loss_box"].float(), rtol=SAME_RTOL, atol=0.0)
    if module is not None:
        assert module.ratio.dtype == torch.float32
        torch.testing.assert_close(module.ratio, ref_module.ratio, rtol=SAME_RTOL, atol=0.0)
        assert all(p.dtype == torch.float32 for p in module.parameters())
    (grad,) = torch.autograd.grad(cls, weight)
    assert torch.isfinite(grad).all()
    # The ratio scales the gradient of L_cls: d(scaled)/d(L_cls) is the float32 weight.
    (d_cls,) = torch.autograd.grad(ref_cls, same["loss_cls"])
    if module is not None:
        expected = module.cls_weight * (module.delta.detach() ** 2 if mode == "learned_scale"
                                        else 1.0)
        if mode == "guided_loss":
            expected = expected / (2 * module.sigmas.detach()[0] ** 2)
        torch.testing.assert_close(d_cls, expected, rtol=SAME_RTOL, atol=0.0)


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------

SHAPES = sorted(glob.glob(os.path.join(REPO, "configs", "Shapes", "*.py")))


def _one_config_per_detector():
    """One config of every distinct detector (test_e2e_robustness's signature: all but the
    backbone, pixel statistics and number of classes): test_e2e_robustness's COCO and VOC
    configs, and the first NEON tree config of each of its detectors."""
    neon_trees = {}
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "NeonTrees", "*.py"))):
        neon_trees.setdefault(_detector_signature(path), path)
    shapes = os.sep + "Shapes" + os.sep  # all of them are tested as configured
    return [p for p in E2E_CONFIGS if shapes not in p] + sorted(neon_trees.values())


DETECTORS = (
    [pytest.param(p, False, id=os.path.relpath(p, os.path.join(REPO, "configs"))[:-3])
     for p in SHAPES]
    + [pytest.param(p, True, id=os.path.relpath(p, os.path.join(REPO, "configs"))[:-3])
       for p in _one_config_per_detector()]
)
SIZE = 128


def _model(path, tiny):
    """The config's model; ``tiny``: with test_e2e_robustness's tiny backbone. Foreground
    statistics are set as if counted on the training data (what "auto" priors read)."""
    if tiny:
        return tiny_model(path)
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(path).model)
    for _, module in foreground_stats_modules(model):
        module.set_foreground_stats(30.0, 3000.0)
    return model


def _record_dtypes(model):
    """Output dtypes of every convolution and linear layer, recorded by forward hooks."""
    seen = set()
    handles = [
        m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    return seen, handles


def _continuous_dense(model):
    """A dense detector whose losses are continuous in its predictions (not GHM, not OHEM):
    the same matching and targets at any precision. In an R-CNN the proposals (top-k and NMS
    of the scores) can differ, and with them the RoIs."""
    if hasattr(model, "proposal_generator"):
        return False
    return not isinstance(model.cls_loss, (GHMCLoss, OHEMLoss)) and not isinstance(
        getattr(model, "box_loss", None), GHMRLoss)


@pytest.mark.parametrize("path,tiny", DETECTORS)
@pytest.mark.parametrize("device,dtype", DEVICES)
def test_detector_trains_under_autocast(path, tiny, device, dtype):
    """One training step under autocast: the model runs in low precision, its losses are
    finite float32 scalars, its gradients finite, its statistics keep their dtype; a dense
    detector's losses are those of the float32 model within :func:`model_rtol`."""
    model = _model(path, tiny).to(device)
    model.train()
    buffers = {n: b.dtype for n, b in model.named_buffers()}
    data = synthetic_batch((3, 1), SIZE, 3, seed=1, extent=0.4, min_side=16, masks=True)
    seen, handles = _record_dtypes(model)
    with EventStorage(), torch.autocast(device, dtype=dtype):
        losses = model(data)
    for h in handles:
        h.remove()
    assert dtype in seen  # the model did run in low precision
    assert losses
    for name, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32, (name, value.dtype)
        assert torch.isfinite(value), (name, value)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # Statistics buffers (foreground counts, guided ratios, GHM EMA, BN statistics) keep their
    # dtype and stay finite.
    assert {n: b.dtype for n, b in model.named_buffers()} == buffers
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            assert torch.isfinite(buffer).all(), name
    for name, module in model.named_modules():  # HPF's gamma_ad / alpha_ad
        for value in (getattr(module, "last_gamma", None), getattr(module, "last_alpha", None)):
            assert value is None or value.dtype == torch.float32, name

    if _continuous_dense(model):
        reference = _model(path, tiny).to(device)  # the same initial weights
        reference.train()
        with EventStorage(), torch.no_grad():
            expected = reference(data)
        assert set(expected) == set(losses)
        for name, value in losses.items():
            torch.testing.assert_close(value.detach(), expected[name], rtol=model_rtol(dtype),
                                       atol=0.0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_roi_pooler_keeps_float32_boxes(device, dtype):
    """hpf's ROIPooler pools low-precision features at the float32 boxes: the float32 pooling
    of the same feature values, up to the rounding of its output. detectron2's rounds the
    boxes of a COCO-sized image to the features' dtype first (multiples of 4-8 px in
    bfloat16), which moves the pooled values by much more."""
    gen = torch.Generator().manual_seed(5)
    size = 1344
    features = [torch.randn(1, 4, size // s, size // s, generator=gen).to(device)
                for s in (4, 8, 16, 32)]
    xy = torch.rand(12, 2, generator=gen) * 900 + 300
    wh = torch.rand(12, 2, generator=gen) * 300 + 20
    boxes = [Boxes(torch.cat([xy, xy + wh], 1).to(device))]
    args = dict(output_size=7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
                pooler_type="ROIAlignV2")
    low = [f.to(dtype) for f in features]
    expected = ROIPooler(**args)([f.float() for f in low], boxes)
    with torch.autocast(device, dtype=dtype):
        pooled = ROIPooler(**args)(low, boxes)
        d2_pooled = D2ROIPooler(**args)(low, boxes)
    assert pooled.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(pooled.float(), expected, rtol=eps, atol=eps)
    assert (d2_pooled.float() - expected).abs().max() > 10 * eps


# The backbone fragments of hpf.config.backbones that the COCO configs use.
BACKBONES_CONFIG = os.path.join(REPO, "configs", "common", "models", "backbones.py")
BACKBONES = ["resnet50_pytorch_style", "resnet101_dcn_c3_c5", "resnext101_64x4d_dcn_c3_c5",
             "swin_s"]


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("device,dtype", DEVICES)
def test_backbone_under_autocast(name, device, dtype):
    """Forward and backward of a backbone on a 64 x 64 input: it runs in low precision, its
    features are finite, its gradients finite float32."""
    torch.manual_seed(0)
    backbone = instantiate(LazyConfig.load(BACKBONES_CONFIG).backbones[name]).to(device)
    backbone.train()
    seen, handles = _record_dtypes(backbone)
    with torch.autocast(device, dtype=dtype):
        features = backbone(torch.randn(1, 3, 64, 64, device=device))
    for h in handles:
        h.remove()
    assert dtype in seen
    # (Swin's features come out of a LayerNorm: float32 under CUDA autocast.)
    assert all(torch.isfinite(f).all() for f in features.values())
    sum(f.float().square().mean() for f in features.values()).backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
