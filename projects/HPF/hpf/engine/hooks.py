"""Training hooks that keep a run's progress when its scheduler stops it."""
import logging
import signal
import threading

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["CheckpointOnSignal", "StoppedBySignal"]

logger = logging.getLogger(__name__)


class StoppedBySignal(SystemExit):
    """Training stopped after saving a checkpoint because the process was asked to end.

    A ``SystemExit``: the process ends with ``128 + signal`` like one killed by the signal,
    and detectron2's trainer does not log it as a crash.
    """


class CheckpointOnSignal(HookBase):
    """
    On SIGTERM (what SLURM, Kubernetes and most schedulers send before killing a job for
    preemption, a requeue or a cancellation), finishes the current iteration, saves a
    checkpoint and stops training, instead of losing everything since the last periodic
    checkpoint. A restart with ``--resume`` continues from the next iteration.

    Every process takes part: a process that received the signal tells the others through one
    all-reduce per iteration, so all stop after the same iteration and rank 0 saves.

    Args:
        checkpointer: the run's checkpointer (its ``save`` is only called on rank 0).
        signals (tuple[int]): the signals that stop training this way.
    """

    def __init__(self, checkpointer, signals=(signal.SIGTERM,)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        # Only remember it: the iteration in progress finishes, then after_step saves.
        self.received = signum

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("CheckpointOnSignal: training runs outside the main thread, where "
                           "signal handlers cannot be installed; it is inactive.")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def after_train(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _agreed_signal(self):
        """The signal received by any process (0: none), the same on every process."""
        if comm.get_world_size() == 1:
            return self.received or 0
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def after_step(self):
        signum = self._agreed_signal()
        if not signum:
            return
        iteration = self.trainer.iter
        name = signal.Signals(signum).name
        if comm.is_main_process():
            logger.warning(f"Received {name}: saving a checkpoint at iteration {iteration} and "
                           "stopping; --resume continues from it.")
            self.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        raise StoppedBySignal(128 + signum)
