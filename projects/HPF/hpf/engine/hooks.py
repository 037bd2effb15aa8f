"""Training hooks: one that keeps a run's progress when its scheduler stops it, one that records
per-level statistics of a dense detector's classification."""
import json
import logging
import math
import os
import signal
import threading

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from torch.nn.parallel import DistributedDataParallel

from hpf.analysis.level_statistics import LevelStatisticsRecorder, sums_to_record

__all__ = ["CheckpointOnSignal", "RecordLevelStatistics", "StoppedBySignal"]

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


class RecordLevelStatistics(HookBase):
    """
    Records, every ``period`` iterations, the positives of each pyramid level and the loss and
    gradient of its hard and easy, positive and negative classification entries (see
    :mod:`hpf.analysis.level_statistics`), summed over the processes, as one JSON line of
    ``<output_dir>/level_statistics.json`` written by rank 0. Off unless a config switches it
    on (``train.level_statistics.enabled``); only the detectors of ``hpf.modeling`` that build
    on ``PluggableLossMixin`` (RetinaNet, FCOS, ATSS) report them.

    A resumed run first drops the lines of the iterations it is about to train again, so that
    the file holds each iteration once.

    Args:
        model: the trained model (wrapped in DistributedDataParallel or not).
        output_dir (str): where ``level_statistics.json`` is written.
        period (int): record every ``period``-th iteration.
        threshold (float): the loss threshold t above which an entry is hard.
    """

    FILE_NAME = "level_statistics.json"

    def __init__(self, model, output_dir, period=1, threshold=math.log(2.0)):
        if period < 1:
            raise ValueError(f"train.level_statistics.period must be >= 1, got {period}")
        self.model = model.module if isinstance(model, DistributedDataParallel) else model
        if not hasattr(self.model, "level_statistics"):
            raise ValueError(
                f"train.level_statistics: {type(self.model).__name__} records no level "
                "statistics; use a dense detector of hpf.modeling (RetinaNet, FCOS, ATSS) or "
                "set train.level_statistics.enabled=False"
            )
        self.path = os.path.join(output_dir, self.FILE_NAME)
        self.period = int(period)
        self.recorder = LevelStatisticsRecorder(self.model.head_in_features, threshold)
        self._file = None

    def before_train(self):
        self.model.level_statistics = self.recorder
        if not comm.is_main_process():
            return
        kept = []
        if PathManager.exists(self.path):
            with PathManager.open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # the last line of a killed run
                        continue
                    if record.get("iteration", math.inf) < self.trainer.iter:
                        kept.append(line if line.endswith("\n") else line + "\n")
        self._file = PathManager.open(self.path, "w")
        self._file.writelines(kept)
        self._file.flush()

    def before_step(self):
        self.recorder.active = self.trainer.iter % self.period == 0

    def after_step(self):
        if not self.recorder.active:
            return
        sums = self.recorder.collect()
        if comm.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            sums = sums.to(device)
            dist.all_reduce(sums)
        if self._file is not None:
            record = sums_to_record(sums, self.trainer.iter, self.recorder.levels,
                                    self.recorder.threshold, comm.get_world_size())
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def after_train(self):
        self.model.level_statistics = None
        if self._file is not None:
            self._file.close()
            self._file = None
