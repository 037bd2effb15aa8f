import importlib.util
import os
import socket
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "Shapes", "fcos_R18h_FPN.py")

# Keep tests light on a 2-core machine (under pytest-xdist, the cores are shared among the
# workers); detectors trained from scratch hit denormals.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _WORKERS))
torch.set_flush_denormal(True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU (skipped without one); `pytest -m cuda` runs them all"
    )


def load_tool(path):
    """
    The module of a script that is not part of the ``hpf`` package (``path`` relative to the
    repository: ``"tools/launch_slurm.py"``, ``"benchmarks/profile_step.py"``,
    ``"tools/analysis/swap_proposals.py"``), imported once under its file name. The script's
    folder is on ``sys.path`` only while its own imports run, as when it runs as a script, so
    that sibling imports (``from proposal_recall import load_run``) resolve to the same modules.
    """
    full = os.path.join(REPO, path)
    name = os.path.splitext(os.path.basename(full))[0]
    module = sys.modules.get(name)
    if module is not None:
        if os.path.abspath(getattr(module, "__file__", None) or "") != full:
            raise ImportError(f"{path}: a module named '{name}' is already imported from "
                              f"{getattr(module, '__file__', None)}")
        return module
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = os.path.dirname(full)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(folder)
    return module


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


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread (a second one mostly waits on a busy 2-core machine)."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


def synthetic_batch(num_boxes, size, num_classes, seed=0, spread=0.5, extent=0.45, min_side=10,
                    masks=False):
    """Detector inputs: one dict per image (``size`` x ``size`` random pixels) with
    ``num_boxes[i]`` random boxes (corners in [0, spread x size), sides min_side + [0, extent x
    size)), random classes and, with ``masks``, box-shaped masks."""
    from detectron2.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in num_boxes:
        xy = torch.rand(n, 2, generator=gen) * size * spread
        wh = torch.rand(n, 2, generator=gen) * size * extent + min_side
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1)
        inst = Instances((size, size), gt_boxes=Boxes(boxes),
                         gt_classes=torch.randint(0, num_classes, (n,), generator=gen))
        if masks:
            inst.gt_masks = BitMasks.from_polygon_masks(
                [[b[[0, 1, 2, 1, 2, 3, 0, 3]].numpy()] for b in boxes], size, size
            ) if n else BitMasks(torch.zeros(0, size, size, dtype=torch.bool))
        image = torch.randint(0, 255, (3, size, size), generator=gen).float()
        out.append({"image": image, "instances": inst, "height": size, "width": size})
    return out


@pytest.fixture(scope="session")
def neon_trees_wheel(tmp_path_factory):
    """The sha256-checked deepforest 2.1.0 wheel (the NEON tree-crown source): from
    ``$DETECTRON2_DATASETS/neon_trees/download/`` or ``datasets/...`` when there, else
    downloaded once with pip.  Without network the tests that use it FAIL (they do not skip):
    the data cannot be checked without its source."""
    from hpf.data import neon_trees as nt

    for base in (os.environ.get("DETECTRON2_DATASETS"), os.path.join(REPO, "datasets")):
        if base:
            path = os.path.join(base, "neon_trees", "download", nt.WHEEL_NAME)
            if os.path.isfile(path):
                return nt._check_wheel(path, os.path.dirname(path))
    try:
        return nt.fetch_wheel(str(tmp_path_factory.mktemp("neon_wheel")))
    except nt.NeonTreesDataError as e:
        problem = str(e)
    pytest.fail(f"The NEON tree tests need {nt.WHEEL_REQUIREMENT} (network, or a copy in "
                f"datasets/neon_trees/download/, e.g. from `make neon-trees`): {problem}",
                pytrace=False)


ANALYSIS_CONFIG = os.path.join(REPO, "configs", "Shapes", "atss_R18h_FPN_hpf_demo.py")


@pytest.fixture(scope="session")
def analysis_run(datasets_root, tmp_path_factory):
    """The output directory of a tiny ATSS + HPF run on the tiny shapes variant (8 iterations,
    evaluated at the end, level statistics recorded every iteration): what the analysis tools
    read (config.yaml, model_final.pth, metrics.json, level_statistics.json)."""
    out = tmp_path_factory.mktemp("analysis_run")
    run_train_net(
        ["--config-file", ANALYSIS_CONFIG, *TINY_TRAIN, f"train.output_dir={out}",
         "train.max_iter=8", "train.checkpointer.period=1000", "train.seed=0",
         "train.level_statistics.enabled=True"],
        datasets_root,
    )
    return out
