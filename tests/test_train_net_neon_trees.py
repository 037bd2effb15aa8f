"""train_net.py on real COCO-format data: the NEON tree-crown tiles with the ImageNet R-50
(``make weights``), through training, ``--eval-only``, ``--resume`` and two gloo processes."""
import json
import os
import shutil

import pytest

from conftest import REPO, free_port, run_train_net

CONFIG = os.path.join(REPO, "configs", "NeonTrees", "atss_R_50_FPN_focal.py")
WEIGHTS = os.path.join(REPO, "weights", "R-50-keras.pkl")
EVAL_FILE = "eval_neon_trees_val.json"

pytestmark = pytest.mark.skipif(not os.path.isfile(WEIGHTS),
                                reason=f"{WEIGHTS} missing: run `make weights`")


def _args(out, *extra):
    return ["--config-file", CONFIG, f"train.output_dir={out}", f"train.init_checkpoint={WEIGHTS}",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", *extra]


def _iterations(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [m["iteration"] for m in map(json.loads, f) if "total_loss" in m]


@pytest.fixture(scope="module")
def neon_root(tmp_path_factory, neon_trees_wheel):
    from hpf.data.neon_trees import generate_neon_trees

    root = tmp_path_factory.mktemp("datasets")
    generate_neon_trees(os.path.join(root, "neon_trees"), wheel=neon_trees_wheel)
    return root


@pytest.fixture(scope="module")
def trained(neon_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("neon_train")
    proc = run_train_net(_args(out, "train.max_iter=4", "train.checkpointer.period=2",
                               "train.log_period=1"), neon_root)
    return out, proc.stdout + proc.stderr


def test_training_loads_the_weights_and_evaluates_on_the_validation_tiles(trained):
    out, log = trained
    for name in ["model_0000001.pth", "model_0000003.pth", "model_final.pth", EVAL_FILE]:
        assert os.path.isfile(os.path.join(out, name)), name
    assert _iterations(out) == [0, 1, 2, 3]
    # every ResNet weight came from the checkpoint: only the FPN and the head start fresh
    header = "Some model parameters or buffers are not found in the checkpoint:\n"
    assert header in log
    missing = log.split(header)[1].split("\n[")[0].split("\n")
    assert missing and all(k.startswith(("backbone.fpn_", "backbone.top_block.", "head.",
                                         "foreground_stats")) for k in missing), missing
    assert "not used by the model" not in log  # fvcore's line for unexpected keys
    assert "Start inference on 13 batches" in log  # the 13 validation tiles
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    with open(os.path.join(out, EVAL_FILE)) as f:
        bbox = json.load(f)["bbox"]
    assert set(bbox) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_eval_only_reproduces_the_training_ap(trained, neon_root, tmp_path):
    out, _ = trained
    run_train_net(["--eval-only", *_args(tmp_path, f"train.init_checkpoint={out}/model_final.pth")],
                  neon_root)
    with open(os.path.join(out, EVAL_FILE)) as f, open(os.path.join(tmp_path, EVAL_FILE)) as g:
        assert json.load(g) == json.load(f)


def test_resume_continues_from_the_last_checkpoint(trained, neon_root, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    proc = run_train_net(["--resume", *_args(resumed, "train.max_iter=5",
                                             "train.log_period=1")], neon_root)
    assert "Starting training from iteration 4" in proc.stdout + proc.stderr
    assert _iterations(resumed) == [0, 1, 2, 3, 4]


def test_two_gloo_processes(neon_root, tmp_path):
    proc = run_train_net(["--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                          *_args(tmp_path, "train.max_iter=1")], neon_root)
    log = proc.stdout + proc.stderr
    assert "World size: 2" in log
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))
    assert os.path.isfile(os.path.join(tmp_path, EVAL_FILE))
