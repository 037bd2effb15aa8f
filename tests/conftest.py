import os
import socket
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "Shapes", "fcos_R18h_FPN.py")

# Keep tests light on a 2-core machine; detectors trained from scratch hit denormals.
torch.set_num_threads(min(2, torch.get_num_threads()))
torch.set_flush_denormal(True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A few iterations of the demo model on the tiny shapes variant.
TINY_TRAIN = [
    "dataloader.train.dataset.names=shapes_tiny_train",
    "dataloader.test.dataset.names=shapes_tiny_val",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "train.log_period=1",
]


def run_train_net(args, datasets_root, timeout=600, check=True, env_extra=None):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    cmd = [sys.executable, os.path.join(REPO, "train_net.py")] + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """A DETECTRON2_DATASETS folder holding the tiny shapes variant (generated once)."""
    from hpf.data.datasets import ensure_tiny_shapes

    root = tmp_path_factory.mktemp("datasets")
    ensure_tiny_shapes(os.path.join(root, "shapes_tiny"))
    return root
