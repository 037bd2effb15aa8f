"""Helpers shared by the losses: reduction, input checks, the distributed sums, float32
statistics under autocast and the sum of losses whose gradients are computed with them."""

import contextlib
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

REDUCTIONS = ("none", "mean", "sum")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce an element-wise loss: "none" | "mean" | "sum".

    "mean" of an empty tensor is 0 (not NaN), so a batch without samples adds nothing.
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / max(loss.numel(), 1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def world_size() -> int:
    """Number of processes when torch.distributed is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes (returns a new tensor); identity in a single process.

    Losses reduce sums and counts, never means, so that a statistic equals the one a single
    process would compute over the concatenation of every process's inputs.
    """
    if world_size() == 1:
        return tensor
    summed = tensor.detach().clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


def check_same_shape(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if tensor.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
            "they must match"
        )


def _finite_probe(tensor: torch.Tensor) -> torch.Tensor:
    """A 0-dim float32 tensor that is NaN or inf whenever `tensor` holds a NaN or inf.

    One read-only reduction: a sum propagates NaN and inf (inf + -inf = NaN), where
    torch.isfinite(...).all() costs several passes and a bool tensor of the input's size. A
    finite sum can still overflow, so a non-finite probe only says "look closer".
    """
    if not tensor.is_floating_point():
        return tensor.new_zeros((), dtype=torch.float32)
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.sum(dtype=dtype).float()


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise FloatingPointError if `tensor` holds NaN or inf (one read pass, one sync)."""
    if bool(torch.isfinite(_finite_probe(tensor))):
        return
    if not bool(torch.isfinite(tensor).all()):  # the probe may have overflowed: be exact
        raise FloatingPointError(f"{name} contains NaN or inf values")


def check_finite_all(name: str, tensors, joined: Optional[torch.Tensor] = None) -> None:
    """check_finite for a list of tensors, naming the bad one as name[i].

    `joined` (e.g. their concatenation) is checked instead when given; otherwise the tensors'
    probes are stacked: one sync either way. The tensors are only scanned one by one to name
    the culprit once something looks wrong.
    """
    if joined is not None:
        probe = _finite_probe(joined)
    elif len(tensors) > 0:
        probe = torch.stack([_finite_probe(t) for t in tensors])
    else:
        return
    if bool(torch.isfinite(probe).all()):
        return
    for i, tensor in enumerate(tensors):
        check_finite(f"{name}[{i}]", tensor)


def as_valid_mask(valid: Optional[torch.Tensor], like: torch.Tensor, name: str = "valid"):
    """Return `valid` as a bool mask broadcastable to `like` (or None).

    A mask with one dimension fewer than `like` ([N] for [N, C]) is per sample and gets a
    trailing singleton dimension; otherwise it must broadcast to `like` as it is.
    """
    if valid is None:
        return None
    if valid.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {valid.dtype}")
    given_shape = tuple(valid.shape)
    if valid.dim() == like.dim() - 1:
        valid = valid.unsqueeze(-1)
    try:
        shape = torch.broadcast_shapes(valid.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(
            f"{name} has shape {given_shape}, which does not broadcast to the logits "
            f"shape {tuple(like.shape)}"
        )
    return valid


def float32_region(device: torch.device):
    """A context in which autocast is off for `device`: the losses compute their statistics
    (and their values) in float32 from inputs upcast once, whatever dtype autocast would pick
    for an op (CUDA autocast runs e.g. ``mv`` in float16)."""
    device_type = device.type if isinstance(device, torch.device) else str(device)
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        enabled = False
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def sum_of_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum()`` of two same-shaped tensors without writing the product where the
    layout allows: one dot per contiguous block (e.g. per image of a level that is a slice of
    ``[B, R, C]`` targets)."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    if a.dim() == 3 and all(a[i].is_contiguous() and b[i].is_contiguous() for i in range(len(a))):
        return torch.stack([torch.dot(a[i].view(-1), b[i].view(-1)) for i in range(len(a))]).sum()
    return (a * b).sum()


class _PrecomputedGradients(torch.autograd.Function):
    """A loss value whose gradients w.r.t. `inputs` were computed with it (in the same pass).

    forward(total, grads, *inputs) returns `total`; backward scales each precomputed
    d total / d input by the incoming gradient. The losses that use it avoid autograd's
    graph of element-wise intermediates: they keep one float32 tensor per input instead.
    """

    @staticmethod
    def forward(ctx, total, grads, *inputs):
        ctx.has_grad = [g is not None for g in grads]
        ctx.dtypes = [x.dtype for x in inputs]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        return total.clone()

    @staticmethod
    @once_differentiable  # the gradients are constants of the graph: no double backward
    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        out = []
        for has_grad, dtype in zip(ctx.has_grad, ctx.dtypes):
            out.append((next(saved) * grad).to(dtype) if has_grad else None)
        return (None, None, *out)


def with_precomputed_gradients(
    total: torch.Tensor, grads: Sequence[Optional[torch.Tensor]], inputs: Sequence[torch.Tensor]
) -> torch.Tensor:
    """`total` (no graph) made differentiable w.r.t. `inputs`, whose gradients are `grads`
    (None where an input needs none)."""
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in inputs):
        return total
    return _PrecomputedGradients.apply(total, list(grads), *inputs)
