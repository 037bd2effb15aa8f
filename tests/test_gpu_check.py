"""tools/gpu_check.py: the parsing of each step's output (on captured samples), the time limits
and budget, and the CPU half end to end (the report's structure and parsed numbers)."""
import json
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, load_tool

gpu_check = load_tool("tools/gpu_check.py")

TRAIN_LOG = """\
[12/02 17:26:18 detectron2]: Rank of current process: 0. World size: 1
[12/02 17:26:18 d2.engine.train_loop]: Starting training from iteration 0
[12/02 17:26:30 d2.utils.events]:  eta: 0:00:01  iter: 279  total_loss: 1.2  loss_cls: 0.4  \
time: 0.0512  last_time: 0.0498  data_time: 0.0021  last_data_time: 0.0019   lr: 0.0002  \
max_mem: 1180M
[12/02 17:26:31 d2.utils.events]:  eta: 0:00:00  iter: 299  total_loss: 1.1  loss_cls: 0.4  \
time: 0.0510  last_time: 0.0501  data_time: 0.0021  last_data_time: 0.0020   lr: 0.0002  \
max_mem: 1214M
[12/02 17:26:31 d2.engine.hooks]: Overall training speed: 297 iterations in 0:00:15 (0.0514 s / it)
[12/02 17:26:31 d2.engine.hooks]: Total training time: 0:01:02 (0:00:21 on hooks)
[12/02 17:26:40 d2.evaluation.evaluator]: Total inference time: 0:00:05.178168 (0.025389 s / iter \
per device, on 1 devices)
[12/02 17:26:40 d2.evaluation.testing]: copypaste: Task: bbox
[12/02 17:26:40 d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl
[12/02 17:26:40 d2.evaluation.testing]: copypaste: 31.0884,52.1781,30.1138,nan,41.4121,40.1212
"""

DETECTORS_OUT = """\
ATSS R-50-FPN, one 64x64 image, cpu, 1 threads; 1 pairs of adjacent steps (focal, loss) on one \
model per loss; loss alone: median of 1

| classification loss | ms / step | x focal (median of pairs) | pair ratios min-max \
| loss fwd+bwd ms | extra over focal, share of the focal step |
|---|---:|---:|---:|---:|---:|
| focal | 250 | 1.000 | 1.000-1.000 | 0.8 | +0.00% |
| HPF (level) | 318 | 0.787 | 0.787-0.787 | 0.8 | +0.04% |
| Sampling-Free | 202 | 0.975 | 0.975-0.975 | 0.4 | -0.15% |

ATSS (focal) 259 ms vs FCOS (same R-50 pytorch-style backbone, P6/P7 from P5) 207 ms, median \
over 1 rounds of the median of 1 steps: ATSS / FCOS = 1.254
"""

RCNN_OUT = """\
One training step, R-50-FPN, one 800x1333 image with 10 boxes, cuda, 2 threads. Time: 5 pairs of \
adjacent steps (baseline, variant) in one process, after one warm-up step each. Memory: median \
over 1 processes of one model each

| model | sampling | RoIs / image | ms / step | x baseline (median of pairs) \
| pair ratios min-max | CUDA max allocated MB | x baseline |
|---|---|---:|---:|---:|---:|---:|---:|
| Faster R-CNN | baseline | 512 | 61 | 1.000 | 1.000-1.000 | 1870 | 1.000 |
| Faster R-CNN | Sampling-Free | 2010 | 66 | 1.082 | 1.050-1.120 | 2133 | 1.141 |
"""

ONE_STAGE_OUT = """\
R-50-FPN COCO configs, one 800x800 image, cuda, 2 threads; 5 adjacent pairs (ATSS, detector) each

| detector | train ms / step | x ATSS (median) | IQR | min-max | inference ms | x ATSS (median) \
| IQR | min-max |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| gfl | 61 | 1.012 | 1.004-1.020 | 0.990-1.031 | 22 | 1.010 | 1.002-1.013 | 0.998-1.020 |
| vfnet | 75 | 1.240 | 1.230-1.250 | 1.210-1.262 | 25 | 1.105 | 1.100-1.110 | 1.090-1.120 |
| tood | 70 | 1.150 | 1.140-1.160 | 1.130-1.171 | 24 | 1.060 | 1.050-1.070 | 1.040-1.080 |
"""


def test_pytest_summary_counts_every_outcome():
    parse = gpu_check.parse_pytest_summary
    assert parse("x\n3 passed, 2 skipped, 1201 deselected, 9 warnings in 11.39s\n") == {
        "passed": 3, "failed": 0, "skipped": 2, "deselected": 1201, "errors": 0, "xfailed": 0,
        "xpassed": 0}
    assert parse("===== 1 failed, 4 passed, 1 error in 3.20s =====")["errors"] == 1
    assert parse("1206 deselected, 9 warnings in 11.39s")["deselected"] == 1206
    # The last summary line counts, not a test's output that looks like one.
    assert parse("7 passed in 2s\n...\n1 passed in 0.5s")["passed"] == 1
    assert parse("collected nothing") == {}


def test_pytest_outcome_and_skip_reasons():
    text = ("SKIPPED [61] tests/test_autocast.py:413: needs CUDA\n"
            "SKIPPED [1] tests/test_atss_matcher.py:330: needs CUDA\n")
    assert gpu_check.parse_pytest_skips(text) == [
        "tests/test_autocast.py:413: needs CUDA (61)",
        "tests/test_atss_matcher.py:330: needs CUDA (1)"]
    judge = gpu_check.judge_pytest
    counts = dict(passed=0, failed=0, skipped=62, errors=0, deselected=5)
    assert judge(0, counts, cuda=False) == ("passed", "62 skipped without CUDA, as expected")
    assert judge(0, counts, cuda=True)[0] == "passed"  # skips on CUDA: noted, with reasons
    assert judge(0, dict(counts, passed=62, skipped=0), cuda=True) == ("passed", "")
    assert judge(1, dict(counts, failed=2), cuda=True) == (
        "failed", "pytest exit code 1: 2 failed, 0 errors")
    # pytest's exit code 5: nothing selected (no test carries the marker)
    assert judge(5, dict(deselected=1200), cuda=True)[1].startswith("no test is marked cuda")


def test_train_log_and_coco_ap():
    ap = gpu_check.parse_coco_copypaste(TRAIN_LOG)
    assert ap["AP"] == pytest.approx(31.0884) and ap["AP50"] == pytest.approx(52.1781)
    assert math.isnan(ap["APs"])
    assert gpu_check.parse_coco_copypaste("no evaluation") == {}
    assert gpu_check.parse_train_log(TRAIN_LOG) == {
        "s_per_iter": 0.0514, "train_s": 62.0, "hooks_s": 21.0, "eval_s_per_image": 0.025389,
        "max_mem_mb": 1214, "world_size": 1}
    assert gpu_check.parse_train_log("") == {}


def test_benchmark_tables():
    det = gpu_check.parse_detector_benchmark(DETECTORS_OUT)
    assert det["x_focal"] == {"focal": 1.0, "HPF (level)": 0.787, "Sampling-Free": 0.975}
    assert det["extra_pct"]["Sampling-Free"] == -0.15 and det["ms_per_step"]["focal"] == 250
    assert (det["atss_ms"], det["fcos_ms"], det["atss_over_fcos"]) == (259, 207, 1.254)
    assert gpu_check.parse_detector_benchmark("crashed") == {}
    rcnn = gpu_check.parse_rcnn_benchmark(RCNN_OUT)
    assert rcnn["memory"] == "CUDA max allocated MB"
    assert rcnn["rows"][1] == {
        "model": "Faster R-CNN", "sampling": "Sampling-Free", "rois_per_image": 2010,
        "ms_per_step": 66, "x_baseline_time": 1.082, "memory_mb": 2133, "x_baseline_memory": 1.141}
    assert gpu_check._check_rcnn(rcnn) == "" and gpu_check._check_rcnn({}) != ""
    summary = gpu_check.summary("bench_rcnn", {"numbers": rcnn})
    assert summary == "Faster R-CNN Sampling-Free: time x1.08, memory x1.14"
    one_stage = gpu_check.parse_one_stage_benchmark(ONE_STAGE_OUT)
    assert one_stage["x_atss_train"] == {"gfl": 1.012, "vfnet": 1.24, "tood": 1.15}
    assert one_stage["inference_ms"]["vfnet"] == 25 and one_stage["train_ms"]["tood"] == 70
    assert one_stage["x_atss_inference"]["tood"] == 1.06
    assert gpu_check._check_one_stage(one_stage) == ""
    assert gpu_check.parse_one_stage_benchmark("crashed") == {}
    without_tood = gpu_check.parse_one_stage_benchmark(ONE_STAGE_OUT.replace("| tood |", "| x |"))
    assert gpu_check._check_one_stage(without_tood) == "no row for tood in the table"
    assert gpu_check.summary("bench_one_stage", {"numbers": one_stage}) == (
        "vs ATSS, train / inference: gfl x1.01 / x1.01, vfnet x1.24 / x1.10, tood x1.15 / x1.06")


def test_launch_line_and_last_error_line(tmp_path):
    text = 'x\ngpu_check launch: {"backend": "nccl", "world_size": 1, "all_reduce": 1.0}\n'
    assert gpu_check.parse_launch_line(text)["backend"] == "nccl"
    assert gpu_check.parse_launch_line("x") is None
    trace = ("Traceback (most recent call last):\n  File x\n"
             "torch.OutOfMemoryError: CUDA out of memory\n")
    assert gpu_check.last_error_line(trace + "\nW1202 a warning\n") == (
        "torch.OutOfMemoryError: CUDA out of memory")
    (tmp_path / "metrics.json").write_text(
        '{"iteration": 0, "total_loss": 1}\n{"iteration": 1, "total_loss": 1}\n'
        '{"iteration": 1, "bbox/AP": 3}\n')
    assert gpu_check.last_iteration(tmp_path) == 1
    assert gpu_check.last_iteration(tmp_path / "none") is None


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_time_limit_kills_the_command_and_its_children(tmp_path):
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print(p.pid, flush=True); time.sleep(60)")
    start = time.perf_counter()
    returncode, text, _ = gpu_check.run_command([sys.executable, "-c", code],
                                                str(tmp_path / "log"), timeout=3)
    assert returncode is None and time.perf_counter() - start < 20
    child = int(text.strip().splitlines()[-1])
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_steps_beyond_the_budget_are_skipped(tmp_path, capsys):
    out = tmp_path / "report"
    assert gpu_check.main(["--cpu", "--steps", "demo,bench_rcnn", "--budget", "5",
                           "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["steps"]) == ["demo", "bench_rcnn"]
    for entry in report["steps"].values():
        assert entry["status"] == "skipped" and "budget" in entry["reason"]
    assert "| demo | skipped: 5 s left of the 5 s budget |" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        gpu_check.main(["--steps", "demo,nope", "--output", str(out)])
    with pytest.raises(SystemExit):
        gpu_check.main(["--limit", "demo", "--output", str(out)])


class CannedCommands:
    """Stands in for ``run_command``: the output a GPU machine would give each command, and
    the metrics.json of the training runs (``backend``: what the launch worker reports)."""

    def __init__(self, backend="nccl"):
        self.backend = backend
        self.commands = []

    def __call__(self, cmd, log_path, timeout, env=None, stderr_path=None):
        self.commands.append(cmd)
        joined = " ".join(cmd)
        if "pytest" in cmd:
            return 0, "SKIPPED [1] tests/x.py:3: needs 2 GPUs\n91 passed, 1 skipped in 30.2s\n", 1
        if "hpf.data.shapes" in cmd:
            return 0, "shapes dataset generated at datasets/shapes (3.1 s)\n", 1
        if "train_net.py" in joined or "--launch-worker" in cmd:
            out = next(a.split("=", 1)[1] for a in cmd if a.startswith("train.output_dir="))
            iters = int(next(a.split("=")[1] for a in cmd if a.startswith("train.max_iter=")))
            with open(os.path.join(out, "metrics.json"), "w") as f:
                f.writelines(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n"
                             for i in range(iters))
            text = TRAIN_LOG
            if "--launch-worker" in cmd:
                text += gpu_check.LAUNCH_TAG + json.dumps(
                    {"backend": self.backend, "world_size": 1, "all_reduce": 1.0,
                     "device": "cuda:0", "cuda_max_allocated_mb": 310}) + "\n"
            return 0, text, 1
        if "benchmark_detectors.py" in joined:
            return 0, DETECTORS_OUT, 1
        if "benchmark_rcnn.py" in joined:
            return 0, RCNN_OUT, 1
        if "benchmark_one_stage_detectors.py" in joined:
            return 0, ONE_STAGE_OUT, 1
        raise AssertionError(joined)


def _cuda_run(monkeypatch, tmp_path, canned):
    """Every step as on a GPU machine, with ``canned`` outputs instead of the commands."""
    monkeypatch.setattr(gpu_check, "run_command", canned)
    monkeypatch.setattr(gpu_check, "environment", lambda cuda: {
        "torch": "2.x", "cuda_version": "12.x", "device_name": "GPU", "nccl": "2.x",
        "commit": "abc"})
    os.makedirs(tmp_path / "logs")
    limits = {name: cuda for name, (cuda, _) in gpu_check.LIMITS.items()}
    return gpu_check.run_steps(list(gpu_check.STEPS), gpu_check.Context(True, str(tmp_path)),
                               470, limits)


def test_cuda_steps_on_canned_outputs(monkeypatch, tmp_path):
    """The CUDA half's commands and how their output is judged, without a GPU."""
    canned = CannedCommands()
    report = _cuda_run(monkeypatch, tmp_path, canned)
    steps = report["steps"]
    assert report["ok"] and {e["status"] for e in steps.values()} == {"passed"}, steps
    assert steps["tests"]["numbers"]["passed"] == 91
    assert steps["tests"]["reason"] == "1 skipped on CUDA: see skip_reasons"
    for name, amp in (("demo", "False"), ("demo_amp", "True")):
        train = steps[name]["commands"][-1]
        assert "train.device=cuda" in train and f"train.amp.enabled={amp}" in train
        assert "train.max_iter=300" in train and "shapes_tiny" not in train
        assert steps[name]["commands"][0].endswith("-m hpf.data.shapes --workers "
                                                   f"{min(8, os.cpu_count())}")
        numbers = steps[name]["numbers"]
        assert numbers["AP"] == pytest.approx(31.0884) and numbers["iterations"] == 300
        assert numbers["max_mem_mb"] == 1214
    launch = steps["launch"]
    assert "train.device=cuda" in launch["commands"][0]
    assert launch["numbers"]["backend"] == "nccl" and launch["numbers"]["iterations"] == 20
    bench = [" ".join(c) for c in canned.commands if "benchmarks" in " ".join(c)]
    assert len(bench) == 3 and all("--device cuda" in c for c in bench)
    assert steps["bench_one_stage"]["numbers"]["x_atss_train"]["vfnet"] == 1.24
    assert steps["bench_rcnn"]["numbers"]["rows"][1]["x_baseline_memory"] == 1.141
    md = (tmp_path / "report.md").read_text()
    assert "| demo_amp | passed |" in md and "AP 31.1, AP50 52.2; 300 it" in md
    assert "## bench_rcnn:" in md and "| Faster R-CNN | Sampling-Free |" in md
    # strict JSON: NaN (no small objects in TRAIN_LOG's AP line) is written as null
    written = json.loads((tmp_path / "report.json").read_text())
    assert math.isnan(numbers["APs"]) and written["steps"]["demo"]["numbers"]["APs"] is None
    assert "NaN" not in (tmp_path / "report.json").read_text()


def test_launch_on_cuda_fails_without_nccl(monkeypatch, tmp_path):
    report = _cuda_run(monkeypatch, tmp_path, CannedCommands(backend="gloo"))
    assert report["ok"] is False
    assert report["steps"]["launch"]["status"] == "failed"
    assert report["steps"]["launch"]["reason"] == "backend gloo, not nccl"


def _gpu_check(args, datasets_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--cpu", "--output",
         str(tmp_path / "report"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report_file = tmp_path / "report" / "report.json"
    assert report_file.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(report_file.read_text())


def test_cpu_half_runs_and_parses_each_step(datasets_root, tmp_path):
    """The training steps end to end (CI runs every step: `make gpu-check` in .ci/run; the
    benchmark steps' parsing is tested on captured output above)."""
    proc, report = _gpu_check(["--steps", "demo,demo_amp,launch"], datasets_root, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ran the CPU half only")
    assert report["cuda"] is False and report["ok"] is True
    assert list(report["steps"]) == ["demo", "demo_amp", "launch"]
    steps = report["steps"]
    for name, entry in steps.items():
        assert set(entry) >= {"title", "status", "reason", "duration_s", "limit_s", "commands",
                              "numbers"}, name
        assert os.path.isfile(tmp_path / "report" / entry["log"]), name
    demo = steps["demo"]
    assert demo["status"] == "passed", demo["reason"]
    numbers = demo["numbers"]
    assert numbers["iterations"] == 4 and numbers["world_size"] == 1
    assert 0 <= numbers["AP"] <= 100 and 0 <= numbers["AP50"] <= 100  # a detection was scored
    assert numbers["wall_s"] > 0 and numbers["s_per_iter"] > 0
    assert steps["demo_amp"]["status"] == "skipped" and "CUDA" in steps["demo_amp"]["reason"]
    launch = steps["launch"]
    assert launch["status"] == "passed", launch["reason"]
    assert launch["numbers"]["backend"] == "gloo" and launch["numbers"]["all_reduce"] == 1.0
    assert launch["numbers"]["iterations"] == 2 and launch["numbers"]["world_size"] == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| demo | passed |" in md and "| launch | passed |" in md


def test_a_step_past_its_limit_is_a_timeout(datasets_root, tmp_path):
    proc, report = _gpu_check(["--steps", "demo", "--limit", "demo=2"], datasets_root, tmp_path)
    assert proc.returncode == 1  # a timed-out step is noticed
    assert report["ok"] is False
    demo = report["steps"]["demo"]
    assert demo["status"] == "timeout" and "timed out after 2 s" in demo["reason"]
    assert demo["duration_s"] < 15
