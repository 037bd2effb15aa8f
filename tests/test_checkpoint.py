"""Checkpoints are renamed into place once complete: a save interrupted by an exception or by
SIGKILL leaves the previous ``last_checkpoint`` loadable, and ``--resume`` continues from it."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from conftest import DEMO_CONFIG, REPO, TINY_TRAIN, free_port, run_train_net
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


def _tiny_run(out, *overrides):
    return ["--config-file", DEMO_CONFIG, *TINY_TRAIN, f"train.output_dir={out}", *overrides]


def _start_train_net(args, datasets_root, wrapper=None):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    train_net = os.path.join(REPO, "train_net.py")
    cmd = [sys.executable, *(["-c", *wrapper] if wrapper else []), train_net, *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(what, condition, proc, timeout=300):
    """Waits until ``condition()`` while the process is still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if condition():
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"not {what} in {timeout} s")


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return ""


def _wait_for_iteration(out, iteration, proc):
    """Waits until metrics.json records ``iteration``."""
    _wait_for(f"at iteration {iteration}",
              lambda: f'"iteration": {iteration},' in _read(out / "metrics.json"), proc)


def _pid_writing(path):
    """The process that has ``path`` open."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds):
                return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no process has {path} open")


def _iteration_of(path):
    return torch.load(path, map_location="cpu", weights_only=False)["iteration"]


def test_sigterm_saves_the_current_iteration_and_resume_continues_from_it(
        datasets_root, tmp_path):
    out = tmp_path / "out"
    proc = _start_train_net(_tiny_run(out, "train.max_iter=1000",
                                      "train.checkpointer.period=1000"), datasets_root)
    _wait_for_iteration(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    stopped = int(re.search(r"Received SIGTERM: saving a checkpoint at iteration (\d+)",
                            log).group(1))
    assert 2 <= stopped < 999
    assert _last_checkpoint(out) == f"model_{stopped:07d}.pth"
    assert _iteration_of(out / f"model_{stopped:07d}.pth") == stopped
    assert "Traceback" not in log  # a planned stop, not a crash

    proc = run_train_net(["--resume", *_tiny_run(out, f"train.max_iter={stopped + 3}")],
                         datasets_root)
    assert f"Starting training from iteration {stopped + 1}" in proc.stdout + proc.stderr
    assert _iteration_of(out / "model_final.pth") == stopped + 2


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_iteration(
        datasets_root, tmp_path):
    """Only rank 1 gets the signal; rank 0, which saves, learns of it through the per-iteration
    all-reduce, and neither waits for the other in a collective."""
    out = tmp_path / "out"
    proc = _start_train_net(
        ["--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
         *_tiny_run(out, "train.max_iter=1000", "train.checkpointer.period=1000")],
        datasets_root)
    _wait_for_iteration(out, 2, proc)
    os.kill(_pid_writing(out / "log.txt.rank1"), signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0  # the spawning process reports the workers' exit code
    assert "exit code 143" in log, log[-3000:]
    stopped = int(re.search(r"Received SIGTERM: saving a checkpoint at iteration (\d+)",
                            log).group(1))
    assert _last_checkpoint(out) == f"model_{stopped:07d}.pth"
    assert _iteration_of(out / f"model_{stopped:07d}.pth") == stopped
    rank1 = (out / "log.txt.rank1").read_text()
    assert "Saving checkpoint" not in rank1  # rank 0 alone writes


def test_a_new_run_does_not_write_over_a_run_s_checkpoints(datasets_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000099.pth")
    proc = run_train_net(_tiny_run(out, "train.max_iter=2"), datasets_root, check=False)
    assert proc.returncode != 0
    assert (f"train.output_dir={out} already holds the checkpoints of a run"
            in proc.stdout + proc.stderr)
    assert "pass --resume" in proc.stderr
    assert (out / "last_checkpoint").read_text() == "model_0000099.pth"
    assert not (out / "model_0000001.pth").exists()


def test_training_killed_again_and_again_finishes_and_evaluates(datasets_root, tmp_path):
    """SIGKILL twice at random moments of training (seeded), and once in the middle of a checkpoint
    write: after each kill ``last_checkpoint`` names a complete checkpoint, and ``--resume``
    continues from it to a loadable ``model_final.pth`` and an evaluation."""
    rng = random.Random(0)
    out = tmp_path / "out"
    max_iter, period = 30, 3
    args = ["--resume", *_tiny_run(out, f"train.max_iter={max_iter}",
                                   f"train.checkpointer.period={period}")]
    saved = -1
    for kill in ("random", "while saving", "random"):
        if kill == "while saving":
            # The next periodic checkpoint after the last one.
            name = f"model_{saved + period:07d}.pth"
            proc = _start_train_net(args, datasets_root,
                                    wrapper=[_KILL_DURING_SAVE, f"{name}.tmp"])
            proc.communicate(timeout=300)
        else:
            starts = _read(out / "log.txt").count("Starting training")
            proc = _start_train_net(args, datasets_root)
            _wait_for("training", lambda: _read(out / "log.txt").count("Starting training")
                      > starts, proc)
            time.sleep(rng.uniform(0, 3))
            proc.kill()
            proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, kill
        name = _last_checkpoint(out)
        found = re.fullmatch(r"model_(\d+)\.pth", name)
        assert found, name
        assert _iteration_of(out / name) == int(found.group(1)) >= saved
        saved = int(found.group(1))
    assert saved < max_iter - 1, "the kills came too late to test anything"

    proc = run_train_net(args, datasets_root)
    log = (out / "log.txt").read_text()
    starts = [int(i) for i in re.findall(r"Starting training from iteration (\d+)", log)]
    assert len(starts) == 4 and starts == sorted(starts) and starts[-1] == saved + 1, starts
    assert _iteration_of(out / "model_final.pth") == max_iter - 1
    assert "copypaste: AP,AP50" in proc.stdout + proc.stderr
    assert (out / "eval_shapes_tiny_val.json").exists()
