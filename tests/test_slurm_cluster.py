"""tools/launch_slurm.py on a real one-node SLURM cluster (tools/slurm_test_cluster.py: Debian's
slurmctld, slurmd and munge, started for this session as root): a job trains and evaluates,
continues from its last checkpoint after ``scontrol requeue``, submitit's SIGUSR2 and
preemption by a job of the high-priority partition, stops on ``scancel``; sbatch's rejections
name the flag to change.

Skipped, with the reason, where the cluster cannot run (not root, no apt to install SLURM,
daemons that do not start)."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from conftest import DEMO_CONFIG, REPO, TINY_TRAIN, load_tool

launch_slurm = load_tool("tools/launch_slurm.py")
slurm_test_cluster = load_tool("tools/slurm_test_cluster.py")

JOB_TIMEOUT = 600  # seconds a step of a job may take before the test fails (CPU-bound CI)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster (partitions ``normal`` and ``high``) for the session."""
    reason = slurm_test_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        slurm_test_cluster.ensure_packages(log=lambda line: None)
    except slurm_test_cluster.ClusterError as e:
        pytest.skip(f"SLURM could not be installed: {e}")
    cluster = slurm_test_cluster.SlurmTestCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except slurm_test_cluster.ClusterError as e:
        cluster.stop()
        pytest.skip(f"the test SLURM cluster did not start: {e}")
    yield cluster
    cluster.stop()


class Run:
    """A training job submitted through the launcher, with its output and log files."""

    def __init__(self, cluster, tmp_path, job_id):
        self.cluster, self.job_id = cluster, job_id
        self.out = tmp_path / "out"
        self.job_log = tmp_path / "jobs" / job_id / f"{job_id}_0_log"

    def info(self):
        return self.cluster.job_info(self.job_id)

    def state(self):
        return self.info().get("JobState")

    def read(self, path):
        try:
            return open(path, errors="replace").read()
        except OSError:
            return ""

    def train_log(self):
        return self.read(self.out / "log.txt")

    def stdout(self):
        return self.read(f"{self.job_log}.out")

    def stderr(self):
        return self.read(f"{self.job_log}.err")

    def wait_for(self, what, condition, timeout=JOB_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.state() in ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"):
                break
            time.sleep(0.5)
        pytest.fail(f"job {self.job_id}: not {what} after {timeout} s.\n{self.info()}\n"
                    f"--- stdout:\n{self.stdout()[-3000:]}\n--- stderr:\n{self.stderr()[-3000:]}")

    def checkpoint_iteration(self):
        """The iteration of the checkpoint ``last_checkpoint`` names (-1: none yet)."""
        name = self.read(self.out / "last_checkpoint")
        if name == "model_final.pth":
            return float("inf")
        found = re.fullmatch(r"model_(\d+)\.pth", name)
        return int(found.group(1)) if found else -1

    def release_requeued(self, restarts=1):
        """Starts the requeued job now: SLURM holds a requeued job back for about two minutes
        (its BeginTime)."""
        self.wait_for("requeued", lambda: self.info().get("JobState") == "PENDING"
                      and int(self.info().get("Restarts", 0)) >= restarts)
        self.cluster.run("scontrol", "update", f"JobId={self.job_id}", "StartTime=now")

    def cancel(self):
        if self.state() in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
            self.cluster.run("scancel", self.job_id, check=False)


@pytest.fixture
def submit(slurm_cluster, datasets_root, tmp_path):
    """Submits the tiny shapes training through tools/launch_slurm.py on the whole node;
    cancels what is left of the job after the test."""
    runs = []

    def submit(*overrides, wait=False, config=DEMO_CONFIG,
               tasks=("--cpus-per-task", str(slurm_cluster.cpus))):
        env = dict(slurm_cluster.env, DETECTRON2_DATASETS=str(datasets_root),
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, os.path.join(REPO, "tools", "launch_slurm.py"), "--cluster",
               "slurm", "--partition", "normal", "--nodes", "1", "--gpus-per-node", "0",
               *tasks, "--job-dir", f"{tmp_path}/jobs/%j", *(["--wait"] if wait else []),
               "--config-file", config, *TINY_TRAIN, f"train.output_dir={tmp_path}/out",
               *overrides]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=JOB_TIMEOUT)
        found = re.search(r"Submitted job (\d+)", proc.stdout)
        if found:
            runs.append(Run(slurm_cluster, tmp_path, found.group(1)))
        assert proc.returncode == 0 and found, proc.stdout[-3000:] + proc.stderr[-3000:]
        return runs[-1], proc

    yield submit
    for run in runs:
        run.cancel()


def assert_resumed_and_finished(run, max_iter, period, restarts=1):
    """The job started over ``restarts`` times, each time from its last checkpoint (a periodic
    one, or the one saved on SIGTERM), and trained to ``max_iter``."""
    run.wait_for("completed", lambda: run.state() == "COMPLETED")
    assert run.info()["Restarts"] == str(restarts)
    log = run.train_log()
    starts = [int(i) for i in re.findall(r"Starting training from iteration (\d+)", log)]
    assert len(starts) == restarts + 1 and starts[0] == 0, starts
    on_sigterm = [int(i) for i in re.findall(
        r"Received SIGTERM: saving a checkpoint at iteration (\d+)", log)]
    for previous, start in zip(starts, starts[1:]):
        assert start > previous and (start % period == 0 or start - 1 in on_sigterm), starts
        assert f"Loading from {run.out}/model_{start - 1:07d}.pth" in log
    final = torch.load(run.out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == max_iter - 1
    assert (run.out / "eval_shapes_tiny_val.json").exists()
    # The first start was stopped by SIGTERM (requeue or preemption) during training: it
    # checkpointed the iteration it was at, and the second start continued from there.
    assert on_sigterm and starts[1] == on_sigterm[0] + 1, (starts, on_sigterm)


def test_requeues_resume_from_the_last_checkpoint(submit, slurm_cluster):
    """``scontrol requeue``, then submitit's own requeue (SIGUSR2, sent near the time limit)
    in the resumed run."""
    run, _ = submit("train.max_iter=40", "train.checkpointer.period=10")
    run.wait_for("checkpointed", lambda: run.checkpoint_iteration() >= 0)
    slurm_cluster.run("scontrol", "requeue", run.job_id)
    run.release_requeued(restarts=1)
    first = run.checkpoint_iteration()
    run.wait_for("checkpointed after resuming", lambda: run.checkpoint_iteration() > first)
    slurm_cluster.run("scancel", "--signal=USR2", run.job_id)
    run.release_requeued(restarts=2)
    assert_resumed_and_finished(run, max_iter=40, period=10, restarts=2)
    assert "Caught signal SIGUSR2" in run.stdout() + run.stderr()


def test_preemption_by_a_high_priority_job_resumes(submit, slurm_cluster, tmp_path):
    run, _ = submit("train.max_iter=40", "train.checkpointer.period=10")
    run.wait_for("checkpointed", lambda: run.checkpoint_iteration() >= 0)
    # Needs every CPU of the node: SLURM requeues the training job to run it.
    high = slurm_cluster.run(
        "sbatch", "--parsable", "--partition", "high", "--cpus-per-task", slurm_cluster.cpus,
        "--output", tmp_path / "high.out", "--wrap", "sleep 2").strip().split(";")[0]
    high_job = Run(slurm_cluster, tmp_path, high)
    high_job.wait_for("run", lambda: high_job.state() == "COMPLETED")
    assert "DUE TO PREEMPTION" in run.stderr()
    run.release_requeued()
    assert_resumed_and_finished(run, max_iter=40, period=10)


def test_scancel_stops_the_job_for_good(submit, slurm_cluster):
    run, _ = submit("train.max_iter=5000", "train.checkpointer.period=10")
    run.wait_for("checkpointed", lambda: run.checkpoint_iteration() >= 0)
    slurm_cluster.run("scancel", run.job_id)
    run.wait_for("cancelled", lambda: run.state() == "CANCELLED")
    # Nothing is lost: the iteration it was at is saved, for a submission that continues it.
    run.wait_for("checkpointed on SIGTERM", lambda: "Received SIGTERM" in run.train_log())
    stopped = re.search(r"Received SIGTERM: saving a checkpoint at iteration (\d+)",
                        run.train_log()).group(1)
    # Not requeued: it stays cancelled once its processes have ended.
    run.wait_for("ended", lambda: not slurm_cluster.run(
        "squeue", "-h", "-j", run.job_id, "-t", "R,CG,PD", "-o", "%A", check=False).strip())
    assert run.state() == "CANCELLED" and run.info()["Restarts"] == "0"
    assert not (run.out / "model_final.pth").exists()
    assert run.checkpoint_iteration() == int(stopped)


def test_two_tasks_train_as_two_machines_with_identical_hpf_statistics(submit, tmp_path):
    """``--tasks-per-node 2``: two SLURM tasks on the one node join one gloo group as machines
    0 and 1 (the rendezvous from the allocation). Each sees its own images, so its local
    positive counts differ, but HPF's gamma_ad / alpha_ad come from the all-reduced statistics
    and are identical on both."""
    run, proc = submit(
        "train.max_iter=4", f"model.cls_loss.record_dir={tmp_path}", wait=True,
        config=os.path.join(REPO, "tests", "configs", "atss_hpf_per_rank_statistics.py"),
        tasks=("--tasks-per-node", "2", "--cpus-per-task", "1"))
    assert f"Job {run.job_id} finished" in proc.stdout
    # submitit reports the job finished once its tasks have returned; SLURM may still be
    # running the epilogue (COMPLETING) for a moment.
    run.wait_for("completed", lambda: run.state() == "COMPLETED")
    assert (run.out / "eval_shapes_tiny_val.json").exists()
    assert "copypaste: AP,AP50" in run.stdout() + run.stderr()
    final = torch.load(run.out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    assert "Rank of current process: 0. World size: 2" in run.train_log()
    assert "Rank of current process: 1. World size: 2" in run.read(run.out / "log.txt.rank1")
    records = [[json.loads(line) for line in run.read(tmp_path / f"hpf.rank{rank}.jsonl")
                .splitlines()] for rank in (0, 1)]
    assert len(records[0]) == len(records[1]) == 4
    for first, second in zip(*records):
        assert first["gamma"] == second["gamma"] and first["alpha"] == second["alpha"]
    assert any(first["local_positives"] != second["local_positives"]
               for first, second in zip(*records))
    gammas = [g for record in records[0] for g in record["gamma"]]
    assert 0 < min(gammas) < max(gammas) < 8  # off the clamp [0, 8]: the statistics decide
    assert (run.out / "eval_shapes_tiny_val.json").exists()


def test_rejections_name_the_flag_to_change(slurm_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.conf)

    def submit(*flags):
        return launch_slurm.main(["--cluster", "slurm", "--job-dir", f"{tmp_path}/jobs/%j",
                                  "--config-file", DEMO_CONFIG, *flags])

    # The node has no GPUs, so no gres either.
    with pytest.raises(launch_slurm.LaunchError, match="gres.*Change --gpus-per-node"):
        submit("--gpus-per-node", "1", "--cpus-per-task", "1")
    with pytest.raises(launch_slurm.LaunchError, match="partition.*Change --partition"):
        submit("--gpus-per-node", "0", "--cpus-per-task", "1", "--partition", "no_such_one")
    # More CPUs than the node has: accepted by sbatch, but never scheduled.
    job = submit("--gpus-per-node", "0", "--cpus-per-task", str(slurm_cluster.cpus + 64))
    slurm_cluster.run("scancel", job.job_id)
    err = capsys.readouterr().err
    assert f"job {job.job_id} is pending with reason PartitionConfig" in err
    assert "Change --cpus-per-task" in err


def test_the_cluster_says_why_it_cannot_run_here(monkeypatch):
    """The reasons the fixture skips with."""
    monkeypatch.setattr(slurm_test_cluster.sys, "platform", "linux")
    monkeypatch.setattr(slurm_test_cluster.os, "geteuid", lambda: 1000)
    assert "needs root" in slurm_test_cluster.unavailable_reason()
    monkeypatch.setattr(slurm_test_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_test_cluster, "_which", lambda program: None)
    reason = slurm_test_cluster.unavailable_reason()
    assert "not installed" in reason and "no apt-get" in reason and "slurmctld" in reason
    with pytest.raises(slurm_test_cluster.ClusterError, match="no apt-get"):
        slurm_test_cluster.ensure_packages()
