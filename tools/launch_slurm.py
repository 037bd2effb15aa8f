#!/usr/bin/env python
"""
Submits train_net.py to a SLURM cluster with submitit: one task per node, each node running
detectron2's ``launch`` over its GPUs, the first host as the rendezvous address.

    python tools/launch_slurm.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.py \\
        --nodes 2 --gpus-per-node 8 --partition learnfair --timeout-min 4320 \\
        train.output_dir=/checkpoint/$USER/atss_hpf

Every start of the job resumes from the last checkpoint in ``train.output_dir`` when there is
one, else starts from ``train.init_checkpoint`` (train_net.py's ``--resume``): the first start,
a requeue after preemption, ``scontrol requeue``, a node failure, and submitit's own requeue
near the time limit (SIGUSR2). SIGTERM (preemption, requeue, scancel) during training finishes
the current iteration, saves a checkpoint and stops (SLURM's grace time, ``KillWait``, must
cover an iteration and a save; otherwise the last periodic checkpoint is what a restart
continues from); outside training it stops at once. SLURM then requeues or cancels the job.
Submitting again with the same ``train.output_dir`` therefore continues that run.

``--gpus-per-node 0`` runs one CPU process per node and requests no GPUs; with it,
``--tasks-per-node N`` runs N such processes per node, each one a machine of the process group
(e.g. to try a multi-machine run on one node). ``--cluster local``
runs the same job as local processes (no SLURM), ``--cluster debug`` in this process: both are
for checking a setup before a large submission.
"""
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zlib

import submitit
from submitit.core.utils import FailedJobError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402

logger = logging.getLogger("detectron2")


class LaunchError(RuntimeError):
    """The job cannot be submitted as asked; the message names what to change."""


def rendezvous_url(hostnames, job_id, base_port=29500):
    """tcp:// address of the job's first host; the port is derived from the job id so that
    two jobs sharing a node do not collide."""
    port = base_port + zlib.crc32(str(job_id).encode()) % 10000
    return f"tcp://{hostnames[0]}:{port}"


def _exit_on_sigterm(signum, frame):
    # SLURM sends SIGTERM (then SIGKILL after its grace time) when it preempts, requeues or
    # cancels the job; submitit would ignore it. Leaving now, through the normal exception
    # path, closes the logs and never leaves a half-written checkpoint behind; SLURM decides
    # whether the job starts again. A preemption signals twice: the second must not interrupt
    # the clean-up the first started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logger.warning("Caught SIGTERM (preemption, requeue or cancellation): stopping. A requeued "
                   "job resumes from the last checkpoint.")
    sys.exit(128 + signum)


class TrainJob:
    """
    The callable submitit runs on every node.

    Args:
        args: train_net's parsed arguments plus ``num_gpus`` (processes per node) and
            ``num_machines``.
    """

    def __init__(self, args):
        self.args = args

    def __call__(self):
        env = submitit.JobEnvironment()
        # SLURM restarts a preempted or requeued job from its original submission, without
        # calling checkpoint(): resuming has to be part of every start.
        self.args.resume = True
        if env.cluster == "slurm":
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        hostnames = getattr(env, "hostnames", None) or ["127.0.0.1"]
        dist_url = rendezvous_url(hostnames, env.job_id)
        # Each SLURM task is one machine of detectron2's launch: one per node, or with
        # --tasks-per-node, several CPU machines per node.
        train_net.launch(
            train_net.main,
            self.args.num_gpus,
            num_machines=env.num_tasks,
            machine_rank=env.global_rank,
            dist_url=dist_url if env.num_tasks > 1 else "auto",
            args=(self.args,),
        )

    def checkpoint(self):
        # Called by submitit on SIGUSR2 (its timeout / preemption signal) before it requeues
        # the job; the periodic checkpoints are already on disk.
        self.args.resume = True
        return submitit.helpers.DelayedSubmission(TrainJob(self.args))


def parse_args(argv=None):
    parser = train_net.default_argument_parser()
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8,
                        help="0: a CPU partition (one process per node, no GPU requested)")
    parser.add_argument("--tasks-per-node", type=int, default=1,
                        help="processes per node, each one machine of the process group; "
                             "above 1 only with --gpus-per-node 0")
    parser.add_argument("--cpus-per-task", type=int, default=10)
    parser.add_argument("--mem-gb", type=int, default=0, help="0: SLURM's default")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--timeout-min", type=int, default=60 * 72)
    parser.add_argument("--job-dir", default="slurm_jobs/%j")
    parser.add_argument("--job-name", default="hpf")
    parser.add_argument("--cluster", default=None, choices=[None, "slurm", "local", "debug"])
    parser.add_argument("--wait", action="store_true", help="wait for the job and report it")
    args = parser.parse_args(argv)
    if args.tasks_per_node < 1:
        parser.error(f"--tasks-per-node must be at least 1, got {args.tasks_per_node}")
    if args.tasks_per_node > 1 and args.gpus_per_node > 0:
        parser.error("--tasks-per-node above 1 needs --gpus-per-node 0: with GPUs, the one task "
                     "of a node starts a training process per GPU itself")
    args.num_gpus = max(args.gpus_per_node, 1)  # no GPUs: one CPU training process per task
    args.num_machines = args.nodes * args.tasks_per_node
    return args


# sbatch's rejection (lowercased substring) -> the launcher flag to change; first match wins.
_SBATCH_ERRORS = [
    ("generic resource", "--gpus-per-node (0 on a partition without GPUs)"),
    ("gres", "--gpus-per-node (0 on a partition without GPUs)"),
    ("partition", "--partition (`sinfo` lists the partitions)"),
    ("memory", "--mem-gb (0: the partition's default)"),
    ("time limit", "--timeout-min"),
    ("--time", "--timeout-min"),
    ("node count", "--nodes"),
    ("task count", "--nodes or --tasks-per-node"),
    ("processors", "--cpus-per-task"),
    ("cpu", "--cpus-per-task"),
    ("node configuration is not available", "--cpus-per-task, --mem-gb or --gpus-per-node"),
]

# Pending reasons of a job the partition can never run -> the flags that cause them.
_NEVER_STARTS = {
    "PartitionConfig": "--cpus-per-task, --mem-gb or --gpus-per-node (more than a node of the "
                       "partition has)",
    "PartitionNodeLimit": "--nodes",
    "PartitionTimeLimit": "--timeout-min",
    "BadConstraints": "--cpus-per-task, --mem-gb or --gpus-per-node",
}


def explain_sbatch_error(stderr):
    """
    One line for a rejected submission: sbatch's own error lines and the launcher flag to
    change.

    Args:
        stderr (str): what sbatch wrote.
    """
    lines = [re.sub(r"^sbatch: error: ", "", line.strip()) for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    message = "; ".join(lines) or "no message"
    text = message.lower()
    for needle, flag in _SBATCH_ERRORS:
        if needle in text:
            return f"sbatch rejected the job: {message}. Change {flag}."
    return f"sbatch rejected the job: {message}."


def check_pending_reason(job_id):
    """
    The one-line warning for a submitted job SLURM says can never start on its partition
    (e.g. more CPUs per task than a node has), else None.

    Args:
        job_id (str): the SLURM job id.
    """
    try:
        reason = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%r"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if reason in _NEVER_STARTS:
        return (f"warning: job {job_id} is pending with reason {reason}: the partition cannot "
                f"run it as requested. Change {_NEVER_STARTS[reason]} and submit again "
                f"(`scancel {job_id}` removes this one).")
    return None


def main(argv=None):
    """
    Submits the job.

    Args:
        argv (list[str]): command line arguments (default: sys.argv).

    Returns:
        the submitit job.

    Raises:
        LaunchError: SLURM is missing or rejected the job (the message names the flag).
    """
    args = parse_args(argv)
    if args.cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise LaunchError("--cluster slurm needs SLURM (sbatch and srun were not found on PATH); "
                          "--cluster local runs the job on this machine without SLURM.")
    executor = submitit.AutoExecutor(folder=args.job_dir, cluster=args.cluster)
    params = dict(
        nodes=args.nodes,
        # One task per node by default; detectron2's launch forks the GPU workers.
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        timeout_min=args.timeout_min,
        name=args.job_name,
        # A job started from another directory still imports train_net.
        slurm_setup=[f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"],
    )
    if args.gpus_per_node > 0:  # even --gpus-per-node=0 is a gres request SLURM may reject
        params["gpus_per_node"] = args.gpus_per_node
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    executor.update_parameters(**params)
    try:
        job = executor.submit(TrainJob(args))
    except FailedJobError as e:
        raise LaunchError(explain_sbatch_error(str(e))) from None
    print(f"Submitted job {job.job_id} ({executor.cluster}); logs in "
          f"{args.job_dir.replace('%j', str(job.job_id))}", flush=True)
    if executor.cluster == "slurm":
        warning = check_pending_reason(job.job_id)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    if args.wait:
        job.results()  # every task's; re-raises a task's exception
        print(f"Job {job.job_id} finished")
    return job


if __name__ == "__main__":
    try:
        main()
    except LaunchError as e:
        sys.exit(f"launch_slurm.py: error: {e}")
