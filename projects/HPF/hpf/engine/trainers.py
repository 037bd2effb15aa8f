"""detectron2 trainers that stop cleanly on a non-finite loss on every process."""
import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer
from detectron2.utils import comm

__all__ = ["FiniteLossTrainer", "FiniteLossAMPTrainer", "GradientClipHook"]


class FiniteLossMixin:
    """
    Raises ``FloatingPointError`` naming the iteration when any process's loss or gradient
    is NaN or inf.

    detectron2 checks the loss only on the main process, after gathering metrics: the other
    processes then block in the next collective. Here every process agrees (one all-reduce of
    a flag) before ``optimizer.step()``, so the weights are never updated with a bad gradient
    and the last periodic checkpoint stays the last good one.
    """

    check_gradients = True

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        cur_iter = self.iter if iter is None else iter
        losses = torch.stack([v.detach().float().sum() for v in loss_dict.values()])
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = torch.isfinite(losses).all()
        if grads and self.check_gradients:  # a finite loss can still give NaN gradients (e.g. sqrt at 0)
            finite &= torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
        finite = finite.to(torch.int32)
        if comm.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                finite = finite.cuda()
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite.item()):
            bad = {k: float(v.detach().float().sum()) for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"Loss became NaN or infinite at iteration {cur_iter} (losses or gradients "
                f"on some process; rank {comm.get_rank()}: {bad}). The weights were not "
                "updated with it; after fixing the cause (learning rate, data, loss), resume "
                "from the last checkpoint with --resume."
            )
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossTrainer(FiniteLossMixin, SimpleTrainer):
    pass


class FiniteLossAMPTrainer(FiniteLossMixin, AMPTrainer):
    check_gradients = False  # inf gradients are expected: GradScaler skips those steps


class GradientClipHook(HookBase):
    """Clips the gradient norm of all parameters after the backward pass (mmdetection's
    ``grad_clip=dict(max_norm=..., norm_type=2)``, used by GHM's configs with max_norm 35).
    Under AMP the gradients are unscaled first, so the norm is the true one."""

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def after_backward(self):
        scaler = getattr(self.trainer, "grad_scaler", None)
        if scaler is not None:
            scaler.unscale_(self.trainer.optimizer)
        params = [p for g in self.trainer.optimizer.param_groups for p in g["params"]
                  if p.grad is not None]
        total = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        self.trainer.storage.put_scalar("grad_norm", float(total), smoothing_hint=True)
