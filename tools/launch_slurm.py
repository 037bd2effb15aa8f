#!/usr/bin/env python
"""
Submits train_net.py to a SLURM cluster with submitit: one task per node, each node running
detectron2's ``launch`` over its GPUs, rank 0's host as the rendezvous address. A preempted or
timed-out job is requeued and continues from its last checkpoint (``--resume``).

    python tools/launch_slurm.py --config-file configs/COCO-Detection/atss_R_50_FPN_1x.py \
        --nodes 2 --gpus-per-node 8 --partition learnfair --timeout-min 4320 \
        train.output_dir=/checkpoint/$USER/atss_hpf

``--cluster local`` runs the same job as local processes (no SLURM), ``--cluster debug`` in
this process: both are for checking a setup before a large submission.
"""
import argparse
import os
import sys
import zlib

import submitit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_net  # noqa: E402


def rendezvous_url(hostnames, job_id, base_port=29500):
    """tcp:// address of the job's first host; the port is derived from the job id so that
    two jobs sharing a node do not collide."""
    port = base_port + zlib.crc32(str(job_id).encode()) % 10000
    return f"tcp://{hostnames[0]}:{port}"


class TrainJob:
    def __init__(self, args):
        self.args = args

    def __call__(self):
        env = submitit.JobEnvironment()
        hostnames = getattr(env, "hostnames", None) or ["127.0.0.1"]
        dist_url = rendezvous_url(hostnames, env.job_id)
        train_net.launch(
            train_net.main,
            self.args.num_gpus,
            num_machines=env.num_nodes,
            machine_rank=env.node,
            dist_url=dist_url if env.num_nodes > 1 else "auto",
            args=(self.args,),
        )

    def checkpoint(self):
        # Called by submitit on preemption / timeout: requeue, continuing from last_checkpoint.
        self.args.resume = True
        return submitit.helpers.DelayedSubmission(TrainJob(self.args))


def parse_args(argv=None):
    parser = train_net.default_argument_parser()
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-task", type=int, default=10)
    parser.add_argument("--mem-gb", type=int, default=0, help="0: SLURM's default")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--timeout-min", type=int, default=60 * 72)
    parser.add_argument("--job-dir", default="slurm_jobs/%j")
    parser.add_argument("--job-name", default="hpf")
    parser.add_argument("--cluster", default=None, choices=[None, "slurm", "local", "debug"])
    parser.add_argument("--wait", action="store_true", help="wait for the job and report it")
    args = parser.parse_args(argv)
    args.num_gpus = args.gpus_per_node
    args.num_machines = args.nodes
    return args


def main(argv=None):
    args = parse_args(argv)
    executor = submitit.AutoExecutor(folder=args.job_dir, cluster=args.cluster)
    params = dict(
        nodes=args.nodes,
        tasks_per_node=1,  # one task per node; detectron2's launch forks the GPU workers
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        timeout_min=args.timeout_min,
        name=args.job_name,
    )
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(args))
    print(f"Submitted job {job.job_id}; logs in {args.job_dir.replace('%j', str(job.job_id))}")
    if args.wait:
        job.result()  # re-raises the job's exception
        print(f"Job {job.job_id} finished")
    return job


if __name__ == "__main__":
    main()
