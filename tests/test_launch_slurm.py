"""The submitit launcher: rendezvous address, what it asks sbatch for, how it reports a
rejected submission, that every start of a job resumes, and a whole job through submitit's
local executor (the same job object SLURM would run). Jobs on a real SLURM cluster:
test_slurm_cluster.py."""
import os
import signal
import stat
import subprocess
import sys

import pytest

from conftest import DEMO_CONFIG, REPO, TINY_TRAIN, load_tool

launch_slurm = load_tool("tools/launch_slurm.py")


def test_rendezvous_url_uses_the_first_host_and_a_job_specific_port():
    a = launch_slurm.rendezvous_url(["node7", "node8"], "12345")
    b = launch_slurm.rendezvous_url(["node7", "node8"], "12346")
    assert a.startswith("tcp://node7:") and b.startswith("tcp://node7:")
    assert a != b
    assert 29500 <= int(a.rsplit(":", 1)[1]) < 39500


def test_each_task_is_a_machine_of_the_process_group(monkeypatch):
    """Two CPU tasks on one node (--tasks-per-node 2): the second task is machine 1 of 2 and
    both meet at the first host."""

    class SecondTask(_FakeJobEnvironment):
        num_tasks, global_rank = 2, 1

    launched = []
    monkeypatch.setattr(launch_slurm.submitit, "JobEnvironment", SecondTask)
    monkeypatch.setattr(launch_slurm.train_net, "launch",
                        lambda main, num_gpus, args, **kw: launched.append((num_gpus, kw)))
    monkeypatch.setattr(launch_slurm.signal, "signal", lambda *a: None)
    args = launch_slurm.parse_args(["--config-file", "x.py", "--gpus-per-node", "0",
                                    "--tasks-per-node", "2"])
    assert args.num_machines == 2
    launch_slurm.TrainJob(args)()
    (num_gpus, kw), = launched
    assert num_gpus == 1 and (kw["num_machines"], kw["machine_rank"]) == (2, 1)
    assert kw["dist_url"] == launch_slurm.rendezvous_url(["node0"], "7")


@pytest.mark.parametrize("flags, message", [
    (["--tasks-per-node", "2"], "--tasks-per-node above 1 needs --gpus-per-node 0"),
    (["--tasks-per-node", "0", "--gpus-per-node", "0"], "--tasks-per-node must be at least 1"),
])
def test_bad_tasks_per_node_is_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        launch_slurm.parse_args(["--config-file", "x.py", *flags])
    assert message in capsys.readouterr().err


def test_parse_args_maps_nodes_and_gpus_to_launch_arguments():
    args = launch_slurm.parse_args(["--config-file", "x.py", "--nodes", "4", "--gpus-per-node",
                                    "8", "train.max_iter=5"])
    assert (args.num_machines, args.num_gpus, args.opts) == (4, 8, ["train.max_iter=5"])
    # No GPUs: still one (CPU) training process per node.
    assert launch_slurm.parse_args(["--config-file", "x.py", "--gpus-per-node", "0"]).num_gpus == 1


def _fake_slurm(tmp_path, monkeypatch, sbatch_stderr=None, pending_reason="Priority"):
    """sbatch, srun and squeue stand-ins first on PATH: sbatch keeps the submission script in
    tmp_path/submission.sh and accepts it as job 42, or fails with ``sbatch_stderr``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if sbatch_stderr is None:
        sbatch = f'cp "$1" {tmp_path}/submission.sh\necho "Submitted batch job 42"\n'
    else:
        sbatch = f"cat >&2 <<'END'\n{sbatch_stderr}\nEND\nexit 1\n"
    scripts = {"sbatch": sbatch, "srun": "exit 0\n", "squeue": f"echo {pending_reason}\n"}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _submit(tmp_path, *flags):
    return launch_slurm.main(["--cluster", "slurm", "--job-dir", f"{tmp_path}/jobs/%j",
                              "--config-file", DEMO_CONFIG, *flags])


def test_no_gres_is_requested_without_gpus(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)
    job = _submit(tmp_path, "--gpus-per-node", "0", "--cpus-per-task", "2")
    flags = dict(line[len("#SBATCH "):].partition("=")[::2] for line in
                 (tmp_path / "submission.sh").read_text().splitlines()
                 if line.startswith("#SBATCH "))
    assert job.job_id == "42"
    assert flags["--cpus-per-task"] == "2"
    assert not [f for f in flags if "gpu" in f or "gres" in f], flags

    (tmp_path / "submission.sh").unlink()
    _submit(tmp_path, "--gpus-per-node", "2")
    assert "\n#SBATCH --gpus-per-node=2\n" in (tmp_path / "submission.sh").read_text()


@pytest.mark.parametrize("stderr,flag", [
    # sbatch 22.05's messages
    ("sbatch: error: Invalid generic resource (gres) specification", "--gpus-per-node"),
    ("sbatch: error: invalid partition specified: gpu\nsbatch: error: Batch job submission "
     "failed: Invalid partition name specified", "--partition"),
    ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job "
     "submission failed: Requested node configuration is not available", "--mem-gb"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not "
     "available", "--cpus-per-task"),
    ("sbatch: error: Invalid --time specification", "--timeout-min"),
])
def test_a_rejected_submission_is_one_line_naming_the_flag(tmp_path, monkeypatch, stderr, flag):
    _fake_slurm(tmp_path, monkeypatch, sbatch_stderr=stderr)
    with pytest.raises(launch_slurm.LaunchError) as e:
        _submit(tmp_path, "--gpus-per-node", "1")
    message = str(e.value)
    assert "\n" not in message
    assert f"Change {flag}" in message
    assert stderr.splitlines()[0].replace("sbatch: error: ", "") in message


def test_a_job_the_partition_cannot_run_is_reported(tmp_path, monkeypatch, capsys):
    _fake_slurm(tmp_path, monkeypatch, pending_reason="PartitionConfig")
    _submit(tmp_path, "--gpus-per-node", "0", "--cpus-per-task", "64")
    err = capsys.readouterr().err
    assert "job 42 is pending with reason PartitionConfig" in err
    assert "--cpus-per-task" in err and "scancel 42" in err


def test_slurm_without_sbatch_says_to_use_the_local_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(launch_slurm.LaunchError, match="needs SLURM.*--cluster local runs"):
        _submit(tmp_path, "--gpus-per-node", "0")


class _FakeJobEnvironment:
    cluster = "slurm"
    job_id = "7"
    num_tasks = 1
    global_rank = 0
    hostnames = ["node0"]


def test_every_start_of_the_job_resumes(monkeypatch):
    """SLURM restarts a requeued or preempted job from its original submission (resume not
    asked for); the job must resume by itself and leave on SIGTERM."""
    launched = []
    monkeypatch.setattr(launch_slurm.submitit, "JobEnvironment", _FakeJobEnvironment)
    monkeypatch.setattr(launch_slurm.train_net, "launch",
                        lambda main, num_gpus, args, **kw: launched.append(args[0].resume))
    args = launch_slurm.parse_args(["--config-file", DEMO_CONFIG, "--gpus-per-node", "0"])
    assert args.resume is False
    previous = signal.getsignal(signal.SIGTERM)
    try:
        launch_slurm.TrainJob(args)()
        assert signal.getsignal(signal.SIGTERM) is launch_slurm._exit_on_sigterm
        with pytest.raises(SystemExit) as e:
            launch_slurm._exit_on_sigterm(signal.SIGTERM, None)
        assert e.value.code == 128 + signal.SIGTERM
        # A second SIGTERM (a preemption sends two) does not interrupt the first's clean-up.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert launched == [True]
    # submitit's own requeue (SIGUSR2 near the time limit) goes through checkpoint().
    requeued = launch_slurm.TrainJob(launch_slurm.parse_args(["--config-file", "x.py"]))
    assert requeued.checkpoint().function.args.resume is True


def test_local_job_trains(datasets_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "launch_slurm.py"), "--cluster", "local",
           "--nodes", "1", "--gpus-per-node", "1", "--job-dir", f"{tmp_path}/jobs/%j", "--wait",
           "--config-file", DEMO_CONFIG, *TINY_TRAIN, f"train.output_dir={tmp_path}/out",
           "train.max_iter=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished" in proc.stdout
    assert os.path.isfile(os.path.join(tmp_path, "out", "model_final.pth"))
