"""train_net.py end to end on the tiny shapes variant (CPU): train, checkpoint, evaluate,
resume, re-evaluate from the checkpoint, multi-process and multi-machine launch."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig

from conftest import DEMO_CONFIG, REPO, TINY_TRAIN, free_port, run_train_net


def read_metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def trained(datasets_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, *TINY_TRAIN, f"train.output_dir={out}",
         "train.max_iter=6", "train.checkpointer.period=3", "train.level_statistics.enabled=True"],
        datasets_root,
    )
    return out, proc


def test_training_writes_the_output_directory(trained):
    out, proc = trained
    for name in ["config.yaml", "log.txt", "metrics.json", "env.txt", "last_checkpoint",
                 "model_0000002.pth", "model_0000005.pth", "model_final.pth"]:
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    with open(os.path.join(out, "env.txt")) as f:
        env = f.read()
    # The versions installed here, whichever way detectron2 was installed (the sal-detectron2
    # wheel or built from source): detectron2's own table row and hpf's package list.
    import importlib.metadata

    import detectron2

    assert re.search(rf"^detectron2\s+{re.escape(detectron2.__version__)} @", env, re.M), env
    assert f"  torch=={importlib.metadata.version('torch')}\n" in env, env
    log = open(os.path.join(out, "log.txt")).read()
    assert re.search(r"eta: \d+:\d\d:\d\d", log), "progress lines with an ETA"
    iters = [m["iteration"] for m in read_metrics(out) if "total_loss" in m]
    assert iters == list(range(6))


def test_training_ends_with_coco_evaluation(trained):
    out, proc = trained
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in proc.stdout + proc.stderr
    with open(os.path.join(out, "eval_shapes_tiny_val.json")) as f:
        bbox = json.load(f)["bbox"]
    assert set(bbox) >= {"AP", "AP50", "AP75"}
    assert any("bbox/AP" in m for m in read_metrics(out)), "AP logged into metrics.json"


def test_eval_only_reproduces_the_training_ap(trained, datasets_root, tmp_path):
    out, _ = trained
    run_train_net(
        ["--config-file", DEMO_CONFIG, "--eval-only", *TINY_TRAIN, f"train.output_dir={tmp_path}",
         f"train.init_checkpoint={out}/model_final.pth"],
        datasets_root,
    )
    with open(os.path.join(out, "eval_shapes_tiny_val.json")) as f:
        at_training_end = json.load(f)
    with open(os.path.join(tmp_path, "eval_shapes_tiny_val.json")) as f:
        from_checkpoint = json.load(f)
    assert from_checkpoint == at_training_end


def test_resume_continues_from_the_last_checkpoint(trained, datasets_root, tmp_path):
    out, _ = trained
    # Continue the finished 6-iteration run in a copy of its directory up to 8 iterations.
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    # As if the run had been killed after recording iterations its checkpoint does not hold.
    with open(resumed / "level_statistics.json", "a") as f:
        f.write(json.dumps({"iteration": 6, "world_size": 99}) + "\n" + '{"iteration": 7, "wo')
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, "--resume", *TINY_TRAIN, f"train.output_dir={resumed}",
         "train.max_iter=8", "train.checkpointer.period=3", "train.level_statistics.enabled=True"],
        datasets_root,
    )
    assert "Starting training from iteration 6" in proc.stdout + proc.stderr
    iters = [m["iteration"] for m in read_metrics(resumed) if "total_loss" in m]
    assert iters[-2:] == [6, 7] and iters.count(5) == 1
    with open(resumed / "level_statistics.json") as f:
        recorded = [json.loads(line) for line in f]
    assert [r["iteration"] for r in recorded] == list(range(8))
    assert {r["world_size"] for r in recorded} == {1}


def test_two_processes_on_cpu(datasets_root, tmp_path):
    proc = run_train_net(
        ["--config-file", DEMO_CONFIG, "--num-gpus", "2",
         "--dist-url", f"tcp://127.0.0.1:{free_port()}", *TINY_TRAIN,
         f"train.output_dir={tmp_path}", "train.max_iter=3", "train.level_statistics.enabled=True"],
        datasets_root,
    )
    log = proc.stdout + proc.stderr
    assert "World size: 2" in log
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))
    # Level statistics: rank 0 writes the sums over both processes (one image each). Rank 0's
    # own positives of the first iteration are in metrics.json (unsmoothed there).
    with open(tmp_path / "level_statistics.json") as f:
        recorded = [json.loads(line) for line in f]
    assert [(r["iteration"], r["world_size"]) for r in recorded] == [(0, 2), (1, 2), (2, 2)]
    rank0 = [read_metrics(tmp_path)[0][f"num_pos/level{k}"] for k in range(5)]
    assert all(both >= own for both, own in zip(recorded[0]["positives"], rank0))
    assert sum(recorded[0]["positives"]) > sum(rank0)


def test_two_machines_on_loopback(datasets_root, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", DEMO_CONFIG,
             "--num-machines", "2", "--machine-rank", str(rank), "--num-gpus", "1",
             "--dist-url", url, *TINY_TRAIN, f"train.output_dir={tmp_path}/m{rank}",
             "train.max_iter=3"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    assert "Rank of current process: 0. World size: 2" in logs[0]
    with open(os.path.join(tmp_path, "m1", "log.txt.rank1")) as f:
        assert "Rank of current process: 1. World size: 2" in f.read()
    assert os.path.isfile(os.path.join(tmp_path, "m0", "model_final.pth"))


def test_visualize_predictions_writes_a_png(trained, datasets_root, tmp_path):
    out, _ = trained
    png = tmp_path / "pred.png"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "visualize_predictions.py"), "--config-file",
         DEMO_CONFIG, "--checkpoint", f"{out}/model_final.pth", "--output", str(png),
         "--num-images", "4", "--score-thresh", "0.0", *TINY_TRAIN],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    image = Image.open(png)
    assert image.size[0] >= 3 * 256 and image.size[1] >= 2 * 256  # 3 columns x 2 rows


def _visualize(trained, datasets_root, png, *args):
    out, _ = trained
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "visualize_predictions.py"), "--config-file",
         DEMO_CONFIG, "--checkpoint", f"{out}/model_final.pth", "--output", str(png), *args,
         *TINY_TRAIN],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


def test_visualize_ground_truth_next_to_chosen_images(trained, datasets_root, tmp_path):
    png = tmp_path / "gt.png"
    proc = _visualize(trained, datasets_root, png, "--indices", "1,2", "--ground-truth",
                      "--boxes-only", "--score-thresh", "0.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    width, height = Image.open(png).size
    assert 2 * 256 <= width <= 2 * 320 and 2 * 256 <= height <= 2 * 320  # 2 columns x 2 rows
    assert "ground truth and detections" in proc.stdout


def test_visualize_names_indices_outside_the_dataset(trained, datasets_root, tmp_path):
    proc = _visualize(trained, datasets_root, tmp_path / "x.png", "--indices", "0,999")
    assert proc.returncode == 2
    assert "--indices [999]" in proc.stderr and "shapes_tiny_val has" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_sampling_free_writes_foreground_stats_and_guided_ratio(datasets_root, tmp_path):
    config = os.path.join(REPO, "configs", "Shapes", "atss_R18h_FPN_sampling_free.py")
    run_train_net(["--config-file", config, *TINY_TRAIN, f"train.output_dir={tmp_path}",
                   "train.max_iter=3", "train.foreground_stats_images=4"], datasets_root)
    stats = json.loads((tmp_path / "foreground_stats.json").read_text())
    # N by hand: 4 images in 2 batches of 2; shapes_tiny images are 256-320 px a side (no
    # resizing), padded per batch to a multiple of 32; ATSS has one anchor per location of
    # P3-P7 (strides 8-128).
    def anchors(h, w):
        return sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32, 64, 128))

    sides = (256, 288, 320)
    per_batch = {2 * anchors(h, w) for h in sides for w in sides}
    n_f, n = stats["num_foreground_anchors"], stats["num_anchors"]
    assert n in {a + b for a in per_batch for b in per_batch}, n
    assert 0 < n_f < n
    pi = n_f / (n * 4)  # Eq. 9, 4 classes
    assert stats["num_classes"] == 4 and stats["prior_prob"] == pytest.approx(pi)
    assert stats["prior_bias"] == pytest.approx(math.log(pi / (1 - pi)))
    assert stats["test_score_thresh"] == pytest.approx(n_f / n)
    last = [m for m in read_metrics(tmp_path) if "total_loss" in m][-1]
    assert "guided_ratio" in last
    assert last["loss_cls"] == pytest.approx(last["loss_box_reg"], rel=1e-4)


@pytest.mark.parametrize("arch", ["faster_rcnn", "cascade_rcnn"])
def test_shapes_rcnn_pair_trains_and_evaluates(arch, datasets_root, tmp_path):
    """The embedded Faster / Cascade R-CNN pair: a few iterations of the baseline and of
    Sampling-Free through train_net.py, evaluated; the Sampling-Free run logs the RPN prior,
    the RPN and per-stage guided ratios and the RoIs it trained on (all proposals + GT, against
    the baseline's samples)."""
    runs = {}
    sampled = LazyConfig.load(os.path.join(REPO, "configs", "Shapes", f"{arch}_R18h_FPN.py"))
    sampled = sampled.model.roi_heads.batch_size_per_image
    for variant in ("", "_sampling_free"):
        out = tmp_path / (variant or "baseline")
        config = os.path.join(REPO, "configs", "Shapes", f"{arch}_R18h_FPN{variant}.py")
        run_train_net(["--config-file", config, *TINY_TRAIN, f"train.output_dir={out}",
                       "train.max_iter=3", "train.foreground_stats_images=4"], datasets_root)
        assert json.loads((out / "eval_shapes_tiny_val.json").read_text())["bbox"]
        runs[variant] = [m for m in read_metrics(out) if "total_loss" in m][-1]
    base, sf = runs[""], runs["_sampling_free"]
    assert base["roi_head/num_fg_samples"] + base["roi_head/num_bg_samples"] == sampled
    stages = ["stage0/", "stage1/", "stage2/"] if arch == "cascade_rcnn" else [""]
    for stage in stages:
        assert sf[stage + "roi_head/guided_ratio"] > 0
        assert sf[stage + "roi_head/num_rois"] > sampled
    assert sf["rpn/guided_ratio"] > 0 and 0 < sf["rpn/prior_prob"] < 0.01
    stats = json.loads((tmp_path / "_sampling_free" / "foreground_stats.json").read_text())
    assert stats["module"] == "proposal_generator"
    assert stats["prior_prob"] == pytest.approx(stats["num_foreground_anchors"] / stats["num_anchors"])


def test_learned_scale_moves_delta_sq_as_its_gradient_predicts(datasets_root, tmp_path):
    """Sixty iterations of Sampling-Free FCOS with the official delta^2 weighting:
    d/d delta (delta^2 L' - log delta^2) = 2 delta (L' - 1 / delta^2), with L' = r L_cls the box
    loss, so delta^2 rises while delta^2 L_box < 1 and falls while it is > 1. delta^2 is logged,
    and the checkpoint holds delta."""
    import torch

    config = os.path.join(REPO, "configs", "Shapes", "fcos_R18h_FPN_sampling_free.py")
    run_train_net(["--config-file", config, *TINY_TRAIN, f"train.output_dir={tmp_path}",
                   "train.max_iter=60", "train.log_period=10",
                   "train.foreground_stats_images=4", "train.checkpointer.period=1000"],
                  datasets_root, timeout=900)
    rows = [m for m in read_metrics(tmp_path) if "total_loss" in m]
    delta_sq = [m["delta_sq"] for m in rows]
    box = [m["loss_fcos_loc"] for m in rows]
    assert "loss_fcos_cls_balance" in rows[-1] and "guided_ratio" in rows[-1]
    # The direction the analysis predicts from the first logged state, and the move.
    rising = delta_sq[0] * box[0] < 1
    move = delta_sq[-1] - delta_sq[0]
    assert (move > 0.05) if rising else (move < -0.05), (delta_sq, box)
    # It heads for 1 / L_box: the gap to it shrinks.
    assert abs(delta_sq[-1] * box[-1] - 1) < abs(delta_sq[0] * box[0] - 1), (delta_sq, box)
    state = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    # The checkpoint holds delta after the last step; the last logged value is from before it,
    # so they differ by at most what 10 logged steps moved it.
    saved = state["model"]["loss_balance.delta"].item() ** 2
    assert abs(saved - delta_sq[-1]) <= abs(delta_sq[-1] - delta_sq[-2]), (saved, delta_sq)
