"""The submitit launcher: rendezvous address, and a whole job through submitit's local
executor (the same job object SLURM would run)."""
import os
import subprocess
import sys

from conftest import DEMO_CONFIG, REPO, TINY_TRAIN

sys.path.insert(0, os.path.join(REPO, "tools"))
import launch_slurm  # noqa: E402


def test_rendezvous_url_uses_the_first_host_and_a_job_specific_port():
    a = launch_slurm.rendezvous_url(["node7", "node8"], "12345")
    b = launch_slurm.rendezvous_url(["node7", "node8"], "12346")
    assert a.startswith("tcp://node7:") and b.startswith("tcp://node7:")
    assert a != b
    assert 29500 <= int(a.rsplit(":", 1)[1]) < 39500


def test_parse_args_maps_nodes_and_gpus_to_launch_arguments():
    args = launch_slurm.parse_args(["--config-file", "x.py", "--nodes", "4", "--gpus-per-node",
                                    "8", "train.max_iter=5"])
    assert (args.num_machines, args.num_gpus, args.opts) == (4, 8, ["train.max_iter=5"])


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
