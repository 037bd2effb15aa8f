"""Helpers shared by the losses: reduction, input checks and the distributed sums."""

from typing import Optional

import torch
import torch.distributed as dist

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


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise FloatingPointError if `tensor` holds NaN or inf (one pass, one sync)."""
    if not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{name} contains NaN or inf values")


def check_finite_all(name: str, tensors, joined: Optional[torch.Tensor] = None) -> None:
    """check_finite for a list of tensors, naming the bad one as name[i].

    `joined` (e.g. their concatenation) is checked instead when given: one pass and one sync;
    the list is only scanned to name the culprit once something is wrong.
    """
    ok = torch.isfinite(joined).all() if joined is not None else None
    if ok is not None and bool(ok):
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
