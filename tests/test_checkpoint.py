"""Checkpoints are renamed into place once complete: a save interrupted by an exception or by
SIGKILL leaves the previous ``last_checkpoint`` loadable, and ``--resume`` continues from it."""
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import DEMO_CONFIG, REPO, TINY_TRAIN, run_train_net
from hpf.engine.checkpoint import AtomicCheckpointer


class _Interrupted(Exception):
    pass


def _interrupting_save(obj, f, *args, **kwargs):
    f.write(b"the first bytes of a checkpoint")  # a partial file, as a killed writer leaves
    raise _Interrupted


def _checkpointer(tmp_path, value):
    model = nn.Linear(2, 1)
    nn.init.constant_(model.weight, value)
    return model, AtomicCheckpointer(model, str(tmp_path), save_to_disk=True)


def _last_checkpoint(directory):
    with open(os.path.join(directory, "last_checkpoint")) as f:
        return f.read()


@pytest.mark.parametrize("name", ["model_final", "model_0000019"])
def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, name):
    """Both a new file name and one that ``last_checkpoint`` already names (fvcore would
    truncate that file in place)."""
    model, checkpointer = _checkpointer(tmp_path, 1.0)
    checkpointer.save("model_final", iteration=9)
    nn.init.constant_(model.weight, 2.0)
    monkeypatch.setattr(torch, "save", _interrupting_save)
    with pytest.raises(_Interrupted):
        checkpointer.save(name, iteration=19)
    monkeypatch.undo()

    assert _last_checkpoint(tmp_path) == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    restored, checkpointer = _checkpointer(tmp_path, 0.0)
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 9
    assert torch.equal(restored.weight, torch.ones_like(restored.weight))


def test_an_interrupted_tag_keeps_the_previous_one(tmp_path, monkeypatch):
    _, checkpointer = _checkpointer(tmp_path, 1.0)
    checkpointer.save("model_0000009", iteration=9)

    def interrupted_replace(src, dst):
        raise _Interrupted

    # The new checkpoint file is complete; only pointing last_checkpoint at it fails.
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (
        interrupted_replace if dst.endswith("last_checkpoint") else real_replace)(src, dst))
    with pytest.raises(_Interrupted):
        checkpointer.save("model_0000019", iteration=19)
    monkeypatch.undo()
    assert _last_checkpoint(tmp_path) == "model_0000009.pth"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 9


# Runs train_net.py in a process that kills itself with SIGKILL in the middle of writing the
# checkpoint whose temporary file name ends with sys.argv[1].
_KILL_DURING_SAVE = """
import os, runpy, signal, sys
import torch

kill_at, train_net = sys.argv[1], sys.argv[2]
real_save = torch.save

def save(obj, f, *args, **kwargs):
    if getattr(f, "name", "").endswith(kill_at):
        f.write(b"the first bytes of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.argv = sys.argv[2:]
runpy.run_path(train_net, run_name="__main__")
"""


def test_training_killed_while_saving_resumes_from_the_previous_checkpoint(
        datasets_root, tmp_path):
    out = tmp_path / "out"
    args = ["--config-file", DEMO_CONFIG, *TINY_TRAIN, f"train.output_dir={out}",
            "train.max_iter=6", "train.checkpointer.period=3"]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, "model_0000005.pth.tmp",
         os.path.join(REPO, "train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _last_checkpoint(out) == "model_0000002.pth"
    assert not (out / "model_0000005.pth").exists()
    assert (out / "model_0000005.pth.tmp").exists()  # what the killed process left
    assert torch.load(out / "model_0000002.pth", weights_only=False)["iteration"] == 2

    proc = run_train_net(["--resume", *args], datasets_root)
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 3" in log, log[-3000:]
    assert _last_checkpoint(out) == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 5
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
