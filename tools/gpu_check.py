#!/usr/bin/env python
"""
The checks worth a few minutes of a GPU, in one command: every step has its own time limit
and all of them together stay within ``--budget`` (470 s by default, under 8 minutes).

    python tools/gpu_check.py [--output output/gpu_check] [--steps demo,launch] [--cpu]
                              [--limit demo=200] [--budget 470]

Steps, each run as a subprocess with its output in ``OUTPUT/logs/STEP.log``:

* ``tests``: ``pytest -m cuda`` (the tests marked ``cuda``): passed / failed / skipped counts.
* ``demo``, ``demo_amp``: 300 iterations of the ``make demo`` config on CUDA without and with
  mixed precision (``train.amp.enabled``), evaluated on shapes_val: AP, wall time, s / it, peak
  memory.
* ``launch``: train_net.py with ``--num-gpus 1`` through detectron2's distributed worker, so
  that a process group (NCCL) of world size 1 exists. detectron2's ``launch()`` calls the main
  function directly when the world size is 1 (no process group); this step instead starts the
  worker that ``launch()`` starts per GPU when the world size is larger, checks the backend
  and an all-reduce on the GPU, then trains a few iterations. DistributedDataParallel is not
  exercised: detectron2's ``create_ddp_model`` leaves the model unwrapped at world size 1.
* ``bench_detectors``, ``bench_rcnn``: benchmarks/benchmark_detectors.py and
  benchmarks/benchmark_rcnn.py with ``--device cuda``: their markdown tables, the step ratios
  of every loss to focal loss, ATSS / FCOS, Sampling-Free / biased sampling (time and peak
  memory).
* ``bench_one_stage``: benchmarks/benchmark_one_stage_detectors.py with ``--device cuda``:
  GFL, VarifocalNet and TOOD (and their progressive losses) against ATSS, training step and
  inference, as ratios.

Writes ``OUTPUT/report.json`` (after every step, so that a killed run leaves what it did) and
``OUTPUT/report.md`` (a table of the steps, then the benchmark tables). Without CUDA (or with
``--cpu``) it runs the CPU half: the same steps at tiny sizes on CPU (the tiny shapes
dataset, a few iterations; AMP skipped; the ``cuda`` tests collected and skipped), which
exercises the plumbing. Exit code 1 when a step failed or timed out, else 0.
"""
import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = "configs/Shapes/atss_R18h_FPN_hpf_demo.py"
DEMO_ITERS = 300
LAUNCH_TAG = "gpu_check launch: "  # prefix of the JSON line the launch worker prints

# Per-step time limits in seconds (CUDA, CPU half). The CUDA limits add up to more than the
# default budget: a step that runs long eats into the later steps' time, not the total.
LIMITS = {
    "tests": (120, 300),
    "demo": (120, 300),
    "demo_amp": (100, 300),
    "launch": (60, 300),
    "bench_detectors": (80, 300),
    "bench_rcnn": (120, 300),
    "bench_one_stage": (90, 300),
}
MIN_STEP_S = 15  # a step is skipped, not started, with less of the budget left

# A few iterations of the demo model on the tiny shapes variant (the CPU half; a score
# threshold of 0 so that the barely trained model has detections and COCO an AP).
TINY_TRAIN = [
    "dataloader.train.dataset.names=shapes_tiny_train",
    "dataloader.test.dataset.names=shapes_tiny_val",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "train.log_period=1",
    "model.test_score_thresh=0.0",
]


class StepFailed(Exception):
    """The step ran and something is wrong (the message says what)."""


class StepSkipped(Exception):
    """The step does not apply here (the message says why)."""


class StepTimeout(Exception):
    """The step ran past its time limit."""


def run_command(cmd, log_path, timeout, env=None, stderr_path=None):
    """
    Runs ``cmd`` in the repository root in a session of its own, its output appended to
    ``log_path``; past ``timeout`` seconds the whole session (data loader workers, spawned
    processes) is killed.

    Args:
        cmd (list[str]): the command.
        log_path (str): file that receives stdout (and stderr unless ``stderr_path``).
        timeout (float): seconds.
        env (dict): environment of the command; default this process's.
        stderr_path (str): a separate file for stderr, so that stdout stays clean.

    Returns:
        tuple: (return code or None if it timed out, stdout (+ stderr) text of this command,
        seconds it ran).
    """
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        offset = log.tell()
        err = open(stderr_path, "a") if stderr_path else None
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                    stderr=err or subprocess.STDOUT, start_new_session=True)
            try:
                returncode = proc.wait(timeout=max(timeout, 0.1))
            except subprocess.TimeoutExpired:
                _kill_session(proc)
                returncode = None
            except BaseException:  # Ctrl-C of this script: leave nothing running
                _kill_session(proc)
                raise
        finally:
            if err:
                err.close()
    with open(log_path) as f:
        f.seek(offset)
        text = f.read()
    return returncode, text, time.perf_counter() - start


def _kill_session(proc):
    """Kills the session ``proc`` leads (SIGKILL: train_net.py answers SIGTERM by finishing
    its iteration first) and reaps ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.wait()


def last_error_line(text):
    """The line of ``text`` most likely to say why a command failed (a Python exception's
    last line, else the last non-empty line), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    line = (errors or lines or [""])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


# ----------------------------------------------------------------------------- parsing


def parse_pytest_summary(text):
    """
    The counts of pytest's last summary line (``3 passed, 2 skipped, 1201 deselected, 9
    warnings in 11.39s``) as ``{"passed": 3, "skipped": 2, ...}``; every outcome present,
    missing ones 0. Empty dict if there is no summary line.
    """
    outcomes = ("passed", "failed", "skipped", "deselected", "errors", "xfailed", "xpassed")
    for line in reversed(text.splitlines()):
        line = line.strip(" =")
        if not re.search(r"\bin \d+(\.\d+)?s\b", line):
            continue
        found = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", line)}
        if "error" in found:
            found["errors"] = found.pop("error")
        if not any(k in found for k in outcomes) and "no tests ran" not in line:
            continue
        return {k: found.get(k, 0) for k in outcomes}
    return {}


def parse_pytest_skips(text):
    """The reasons of ``-rs``'s short summary (``SKIPPED [2] tests/x.py:10: needs CUDA``) as a
    list of ``"tests/x.py:10: needs CUDA (2)"``."""
    return [f"{where} ({n})" for n, where in
            re.findall(r"^SKIPPED \[(\d+)\] (.+)$", text, re.M)]


def judge_pytest(returncode, counts, cuda):
    """
    Status and reason of the ``tests`` step from pytest's exit code and counts.

    Returns:
        tuple: ("passed" or "failed", reason or "").
    """
    selected = sum(counts.get(k, 0) for k in ("passed", "failed", "skipped", "errors",
                                              "xfailed", "xpassed"))
    if returncode == 5 or (returncode == 0 and selected == 0):
        return "failed", "no test is marked cuda (pytest selected none)"
    if returncode != 0 or counts.get("failed") or counts.get("errors"):
        return "failed", (f"pytest exit code {returncode}: {counts.get('failed', 0)} failed, "
                          f"{counts.get('errors', 0)} errors")
    if counts.get("skipped"):
        if not cuda:
            return "passed", f"{counts['skipped']} skipped without CUDA, as expected"
        return "passed", f"{counts['skipped']} skipped on CUDA: see skip_reasons"
    return "passed", ""


def parse_coco_copypaste(text):
    """The last bbox result of detectron2's ``copypaste:`` lines as ``{"AP": 35.2, ...}``
    (percent; NaN where COCO has nothing to score); empty dict if there is none."""
    found = re.findall(r"copypaste: Task: bbox\s*\n.*copypaste: ([\w,]+)\s*\n"
                       r".*copypaste: ([-\w.,]+)", text)
    if not found:
        return {}
    names, values = found[-1]
    return {name: float(value) for name, value in zip(names.split(","), values.split(","))}


def _seconds(hms):
    hours, minutes, seconds = hms.split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def parse_train_log(text):
    """
    What detectron2's training log says about speed and memory: ``s_per_iter`` (after its
    warm-up iterations), ``train_s`` and ``hooks_s`` (whole training, including the final
    evaluation, which is a hook), ``eval_s_per_image``, ``max_mem_mb`` (the last ``max_mem``,
    CUDA only) and ``world_size``. Keys whose line is missing are left out.
    """
    out = {}
    m = re.findall(r"Overall training speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)", text)
    if m:
        out["s_per_iter"] = float(m[-1][1])
    m = re.findall(r"Total training time: (\d+:\d\d:\d\d) \((\d+:\d\d:\d\d) on hooks\)", text)
    if m:
        out["train_s"], out["hooks_s"] = _seconds(m[-1][0]), _seconds(m[-1][1])
    m = re.findall(r"Total inference time: \S+ \(([\d.]+) s / iter per device", text)
    if m:
        out["eval_s_per_image"] = float(m[-1])
    m = re.findall(r"max_mem: (\d+)M", text)
    if m:
        out["max_mem_mb"] = int(m[-1])
    m = re.findall(r"Rank of current process: \d+\. World size: (\d+)", text)
    if m:
        out["world_size"] = int(m[-1])
    return out


def last_iteration(output_dir):
    """The last training iteration in ``output_dir``/metrics.json (None if there is none)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    iters = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if "total_loss" in row:
                    iters.append(row["iteration"])
    return max(iters) if iters else None


def parse_launch_line(text):
    """The dict the launch worker printed after ``LAUNCH_TAG`` (None if it did not)."""
    lines = [line for line in text.splitlines() if line.startswith(LAUNCH_TAG)]
    return json.loads(lines[-1][len(LAUNCH_TAG):]) if lines else None


def markdown_tables(text):
    """Every markdown table of ``text`` as a list of rows of stripped cells, the header row
    first and the ``|---|`` row left out."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line[1:-1].split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _number(cell):
    """A table cell as a float (``+0.12%`` -> 0.12); None if it is not a number."""
    try:
        return float(cell.rstrip("%"))
    except ValueError:
        return None


def parse_detector_benchmark(text):
    """
    The table of benchmarks/benchmark_detectors.py: per classification loss the step time
    (``ms_per_step``), the median ratio of its steps to the focal-loss steps (``x_focal``) and
    the extra cost of the loss alone in percent of the focal step (``extra_pct``); and the
    ATSS / FCOS line (``atss_ms``, ``fcos_ms``, ``atss_over_fcos``). Empty dict if the table is
    missing.
    """
    table = next((t for t in markdown_tables(text) if t[0][0] == "classification loss"), None)
    if table is None:
        return {}
    out = {"ms_per_step": {}, "x_focal": {}, "extra_pct": {}}
    for row in table[1:]:
        out["ms_per_step"][row[0]] = _number(row[1])
        out["x_focal"][row[0]] = _number(row[2])
        out["extra_pct"][row[0]] = _number(row[5])
    m = re.search(r"ATSS \(focal\) (\d+) ms vs FCOS .*? (\d+) ms, .*ATSS / FCOS = ([\d.]+)",
                  text, re.S)
    if m:
        out["atss_ms"], out["fcos_ms"] = float(m.group(1)), float(m.group(2))
        out["atss_over_fcos"] = float(m.group(3))
    return out


def parse_rcnn_benchmark(text):
    """
    The table of benchmarks/benchmark_rcnn.py: ``memory`` (the memory column's name: CUDA
    max allocated or peak RSS) and ``rows``, one dict per (model, sampling) with the RoIs per
    image, ms per step, time and memory as ratios to the baseline and the memory in MB. Empty
    dict if the table is missing.
    """
    table = next((t for t in markdown_tables(text) if t[0][:2] == ["model", "sampling"]), None)
    if table is None:
        return {}
    rows = [{"model": r[0], "sampling": r[1], "rois_per_image": _number(r[2]),
             "ms_per_step": _number(r[3]), "x_baseline_time": _number(r[4]),
             "memory_mb": _number(r[6]), "x_baseline_memory": _number(r[7])}
            for r in table[1:] if len(r) == 8]
    return {"memory": table[0][6], "rows": rows}


def parse_one_stage_benchmark(text):
    """
    The table of benchmarks/benchmark_one_stage_detectors.py: per detector the median training
    step and inference in ms (``train_ms``, ``inference_ms``) and their median ratios to ATSS
    (``x_atss_train``, ``x_atss_inference``). Empty dict if the table is missing.
    """
    table = next((t for t in markdown_tables(text) if t[0][:2] == ["detector", "train ms / step"]),
                 None)
    if table is None:
        return {}
    out = {"train_ms": {}, "x_atss_train": {}, "inference_ms": {}, "x_atss_inference": {}}
    for row in table[1:]:
        if len(row) != 9:
            continue
        out["train_ms"][row[0]], out["x_atss_train"][row[0]] = _number(row[1]), _number(row[2])
        out["inference_ms"][row[0]] = _number(row[5])
        out["x_atss_inference"][row[0]] = _number(row[6])
    return out


# ----------------------------------------------------------------------------- steps


class StepRun:
    """
    One step: runs its commands within the step's deadline and collects what the report
    says about it.

    Args:
        name (str): the step's name (the log file's name).
        limit (float): seconds the step may take.
        ctx (Context): the run's settings.
    """

    def __init__(self, name, limit, ctx):
        self.name = name
        self.limit = limit
        self.ctx = ctx
        self.deadline = time.monotonic() + limit
        self.commands = []
        self.numbers = {}
        self.notes = []
        self.markdown = None
        self.log = os.path.join(ctx.output, "logs", f"{name}.log")
        open(self.log, "w").close()

    def command(self, cmd, separate_stderr=False):
        """Runs ``cmd`` with what is left of the step's time; returns (return code, text).
        Raises StepTimeout when the time runs out."""
        self.commands.append(shlex.join(cmd))
        what = cmd[2] if cmd[1] == "-m" else os.path.basename(cmd[1])  # python -m X / X.py
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepTimeout(f"timed out after {self.limit:.0f} s, before {what}")
        stderr = os.path.join(self.ctx.output, "logs", f"{self.name}.stderr.log")
        returncode, text, _ = run_command(cmd, self.log, left, self.ctx.env,
                                          stderr if separate_stderr else None)
        if returncode is None:
            raise StepTimeout(f"timed out after {self.limit:.0f} s, in {what}")
        if returncode != 0 and separate_stderr:
            with open(stderr) as f:
                text += f.read()
        return returncode, text

    def run_dir(self):
        """An empty folder for this step's training run (train_net.py refuses to start a new
        run over another one's checkpoints)."""
        path = os.path.join(self.ctx.output, "runs", self.name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path


def step_tests(run):
    ctx = run.ctx
    returncode, text = run.command(
        [ctx.python, "-m", "pytest", "tests", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider"])
    counts = parse_pytest_summary(text)
    run.numbers.update(counts)
    run.numbers["skip_reasons"] = parse_pytest_skips(text)
    status, reason = judge_pytest(returncode, counts, ctx.cuda)
    if status == "failed":
        raise StepFailed(reason)
    if reason:
        run.notes.append(reason)


def _train(run, opts):
    """train_net.py on the demo config with ``opts``; fails the step unless it exits 0."""
    returncode, text = run.command(
        [run.ctx.python, "train_net.py", "--config-file", DEMO_CONFIG, *opts])
    if returncode != 0:
        raise StepFailed(f"train_net.py exit code {returncode}: {last_error_line(text)}")
    return text


def demo_step(amp):
    """The ``demo`` (``amp=False``) or ``demo_amp`` step."""

    def step(run):
        ctx = run.ctx
        if amp and not ctx.cuda:
            raise StepSkipped("AMP (train.amp.enabled=True) needs CUDA")
        out = run.run_dir()
        if ctx.cuda:
            # As `make demo`: the shapes dataset first, its generation not in the train time.
            returncode, text = run.command([ctx.python, "-m", "hpf.data.shapes", "--workers",
                                            str(min(8, os.cpu_count() or 1))])
            if returncode != 0:
                raise StepFailed(f"python -m hpf.data.shapes: {last_error_line(text)}")
            # More loader workers than the CPU demo's one: the GPU step is not the bottleneck.
            opts = ["train.device=cuda", f"train.max_iter={DEMO_ITERS}",
                    "dataloader.train.num_workers=4", "dataloader.test.num_workers=4"]
        else:
            opts = TINY_TRAIN + ["train.max_iter=4"]
        opts += [f"train.amp.enabled={amp}", f"train.output_dir={out}",
                 "train.checkpointer.period=100000"]  # only model_final.pth
        start = time.perf_counter()
        text = _train(run, opts)
        run.numbers["wall_s"] = round(time.perf_counter() - start, 1)
        run.numbers.update(parse_train_log(text))
        ap = parse_coco_copypaste(text)
        run.numbers.update(ap)
        last = last_iteration(out)
        run.numbers["iterations"] = None if last is None else last + 1
        if not ap:
            raise StepFailed("no COCO AP in the log")
        if math.isnan(ap["AP"]):
            raise StepFailed("AP is NaN: the model made no detections")

    return step


def step_launch(run):
    ctx = run.ctx
    out = run.run_dir()
    iters = 20 if ctx.cuda else 2
    opts = TINY_TRAIN[:2] + [f"train.max_iter={iters}", f"train.output_dir={out}",
                             "train.checkpointer.period=100000"]
    opts += ["train.device=cuda"] if ctx.cuda else TINY_TRAIN[2:]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    returncode, text = run.command(
        [ctx.python, os.path.join("tools", "gpu_check.py"), "--launch-worker", "--config-file",
         DEMO_CONFIG, "--num-gpus", "1", "--dist-url", f"tcp://127.0.0.1:{port}", *opts])
    info = parse_launch_line(text) or {}
    logged = parse_train_log(text)
    run.numbers.update(logged)
    run.numbers.update(info)
    last = last_iteration(out)
    run.numbers["iterations"] = None if last is None else last + 1
    if returncode != 0:
        raise StepFailed(f"exit code {returncode}: {last_error_line(text)}")
    expected = "nccl" if ctx.cuda else "gloo"
    problems = []
    if info.get("backend") != expected:
        problems.append(f"backend {info.get('backend')}, not {expected}")
    if info.get("world_size") != 1 or logged.get("world_size") != 1:
        problems.append(f"world size {info.get('world_size')} (log: {logged.get('world_size')})"
                        ", not 1")
    if info.get("all_reduce") != 1.0:
        problems.append(f"all_reduce of 1 gave {info.get('all_reduce')}")
    if run.numbers["iterations"] != iters:
        problems.append(f"trained {run.numbers['iterations']} of {iters} iterations")
    if ctx.cuda and not info.get("cuda_max_allocated_mb"):
        problems.append("no CUDA memory allocated: did it train on the GPU?")
    if problems:
        raise StepFailed("; ".join(problems))


def benchmark_step(script, cuda_args, cpu_args, parse, check):
    """A step running ``benchmarks/<script>`` with ``cuda_args`` or ``cpu_args``: its stdout
    (the tables) goes into the report, ``parse(stdout)`` into its numbers; ``check(numbers)``
    says what is missing."""

    def step(run):
        ctx = run.ctx
        args = cuda_args if ctx.cuda else cpu_args
        returncode, text = run.command([ctx.python, os.path.join("benchmarks", script), *args],
                                       separate_stderr=True)
        if returncode != 0:
            raise StepFailed(f"{script} exit code {returncode}: {last_error_line(text)}")
        run.markdown = text.strip()
        run.numbers.update(parse(text))
        missing = check(run.numbers)
        if missing:
            raise StepFailed(f"{script}: {missing}")

    return step


def _check_detectors(numbers):
    if not numbers.get("x_focal"):
        return "no loss table in the output"
    if "atss_over_fcos" not in numbers:
        return "no ATSS / FCOS line in the output"
    return ""


def _check_one_stage(numbers):
    missing = [name for name in ("gfl", "vfnet", "tood")
               if name not in numbers.get("x_atss_train", {})]
    return f"no row for {', '.join(missing)} in the table" if missing else ""


def _check_rcnn(numbers):
    rows = numbers.get("rows") or []
    if not any(r["sampling"] == "Sampling-Free" for r in rows):
        return "no Sampling-Free row in the table"
    return ""


STEPS = {
    "tests": ("pytest -m cuda", step_tests),
    "demo": (f"demo config, {DEMO_ITERS} iterations", demo_step(amp=False)),
    "demo_amp": (f"demo config, {DEMO_ITERS} iterations, AMP", demo_step(amp=True)),
    "launch": ("train_net.py --num-gpus 1, process group", step_launch),
    "bench_detectors": ("benchmark_detectors.py", benchmark_step(
        "benchmark_detectors.py",
        ["--size", "800", "--reps", "5", "--rounds", "2", "--loss-reps", "20", "--device", "cuda"],
        ["--size", "64", "--reps", "1", "--rounds", "1", "--loss-reps", "1", "--threads", "1",
         "--device", "cpu"],
        parse_detector_benchmark, _check_detectors)),
    # One process per memory figure on CUDA (max allocated does not vary between runs).
    "bench_rcnn": ("benchmark_rcnn.py", benchmark_step(
        "benchmark_rcnn.py",
        ["--pairs", "5", "--rounds", "1", "--device", "cuda"],
        ["--height", "160", "--width", "224", "--pairs", "2", "--rounds", "1", "--threads", "1",
         "--device", "cpu", "--models", "Cascade R-CNN", "--post-nms-topk", "50"],
        parse_rcnn_benchmark, _check_rcnn)),
    "bench_one_stage": ("benchmark_one_stage_detectors.py", benchmark_step(
        "benchmark_one_stage_detectors.py",
        ["--size", "800", "--pairs", "5", "--device", "cuda"],
        ["--size", "64", "--pairs", "1", "--threads", "1", "--device", "cpu",
         "--detectors", "gfl", "vfnet", "tood"],
        parse_one_stage_benchmark, _check_one_stage)),
}


# ----------------------------------------------------------------------------- report


def summary(name, entry):
    """The key numbers of one step's report entry, in a few words."""
    n = entry.get("numbers", {})

    def fmt(value, spec=".1f"):
        return "?" if value is None else format(value, spec)

    if name == "tests" and "passed" in n:
        return f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped"
    if name.startswith("demo") and "AP" in n:
        text = f"AP {fmt(n.get('AP'))}, AP50 {fmt(n.get('AP50'))}; {n.get('iterations')} it"
        text += f", {fmt(n.get('s_per_iter'), '.3f')} s/it, {fmt(n.get('wall_s'), '.0f')} s in all"
        if "max_mem_mb" in n:
            text += f", max mem {n['max_mem_mb']} MB"
        return text
    if name == "launch" and "backend" in n:
        return (f"backend {n['backend']}, world size {n.get('world_size')}, "
                f"{n.get('iterations')} it")
    if name == "bench_detectors" and n.get("x_focal"):
        ratios = ", ".join(f"{k} x{fmt(n['x_focal'].get(k), '.2f')}"
                           for k in ("HPF (level)", "Sampling-Free") if k in n["x_focal"])
        return f"vs focal: {ratios}; ATSS / FCOS {fmt(n.get('atss_over_fcos'), '.2f')}"
    if name == "bench_rcnn" and n.get("rows"):
        return "; ".join(f"{r['model']} {r['sampling']}: time x{fmt(r['x_baseline_time'], '.2f')}"
                         f", memory x{fmt(r['x_baseline_memory'], '.2f')}"
                         for r in n["rows"] if r["sampling"] == "Sampling-Free")
    if name == "bench_one_stage" and n.get("x_atss_train"):
        return "vs ATSS, train / inference: " + ", ".join(
            f"{k} x{fmt(v, '.2f')} / x{fmt(n['x_atss_inference'].get(k), '.2f')}"
            for k, v in n["x_atss_train"].items() if k in ("gfl", "vfnet", "tood"))
    return ""


def _finite(value):
    """``value`` with NaN and inf replaced by None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_report(report, output):
    """Writes ``report.json`` and ``report.md`` into ``output``."""
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(_finite(report), f, indent=2)
    nccl = f", NCCL {report['nccl']}" if report.get("nccl") else ""
    lines = [f"# GPU check: {report['device_name']}, {report['started']}", "",
             f"torch {report['torch']}, CUDA {report['cuda_version']}{nccl}, commit "
             f"{report['commit']}; {report['duration_s']:.0f} s of a {report['budget_s']} s "
             "budget.", "",
             "| step | status | seconds | numbers |", "|---|---|---:|---|"]
    for name, entry in report["steps"].items():
        status = entry["status"] + (f": {entry['reason']}" if entry.get("reason") else "")
        lines.append(f"| {name} | {status.replace('|', '/')} | {entry.get('duration_s', 0):.0f} "
                     f"| {summary(name, entry).replace('|', '/')} |")
    for name, entry in report["steps"].items():
        if entry.get("markdown"):
            lines += ["", f"## {name}: `{entry['commands'][-1]}`", "", entry["markdown"]]
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def environment(cuda):
    """Versions, the device and the commit, for the report's header."""
    import torch

    info = {"torch": torch.__version__, "cuda_version": torch.version.cuda,
            "device_name": torch.cuda.get_device_name(0) if cuda else "CPU", "nccl": None}
    if cuda:
        try:
            info["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except (AttributeError, RuntimeError, TypeError):  # a build without NCCL
            pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info["commit"] = commit or "unknown"
    return info


class Context:
    """
    Settings shared by the steps.

    Args:
        cuda (bool): run the CUDA steps (else the CPU half).
        output (str): the report folder.
    """

    def __init__(self, cuda, output):
        self.cuda = cuda
        self.output = output
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not cuda:
            # The CPU half on a machine with a GPU: detectron2's launch would pick NCCL.
            self.env["CUDA_VISIBLE_DEVICES"] = ""


def run_steps(names, ctx, budget, limits):
    """
    Runs the steps ``names`` in order, each within its limit and what is left of ``budget``
    seconds, rewriting the report after each.

    Returns:
        dict: the report.
    """
    started = time.monotonic()
    report = {"cuda": ctx.cuda, "started": datetime.datetime.now(datetime.timezone.utc)
              .strftime("%Y-%m-%d %H:%M UTC"), "budget_s": budget, "duration_s": 0.0,
              **environment(ctx.cuda), "steps": {}}
    for name in names:
        title, fn = STEPS[name]
        left = budget - (time.monotonic() - started)
        limit = min(limits[name], left)
        entry = {"title": title, "limit_s": round(limit)}
        print(f"[gpu_check] {name}: {title} (limit {limit:.0f} s) ...", flush=True)
        if left < MIN_STEP_S:
            entry.update(status="skipped", reason=f"{left:.0f} s left of the {budget} s budget",
                         duration_s=0.0, commands=[], numbers={})
        else:
            run = StepRun(name, limit, ctx)
            start = time.monotonic()
            try:
                fn(run)
                status, reason = "passed", "; ".join(run.notes)
            except StepSkipped as e:
                status, reason = "skipped", str(e)
            except StepTimeout as e:
                status, reason = "timeout", str(e)
            except StepFailed as e:
                status, reason = "failed", str(e)
            except Exception as e:  # a bug of this script or a crash in parsing: report it
                status, reason = "failed", f"{type(e).__name__}: {e}"
                with open(run.log, "a") as f:
                    f.write(traceback.format_exc())
            entry.update(status=status, reason=reason,
                         duration_s=round(time.monotonic() - start, 1), commands=run.commands,
                         log=os.path.relpath(run.log, ctx.output), numbers=run.numbers)
            if run.markdown:
                entry["markdown"] = run.markdown
        report["steps"][name] = entry
        report["duration_s"] = round(time.monotonic() - started, 1)
        report["ok"] = not any(e["status"] in ("failed", "timeout")
                               for e in report["steps"].values())
        print(f"[gpu_check] {name}: {entry['status']}"
              + (f" ({entry['reason']})" if entry["reason"] else "")
              + f", {entry['duration_s']:.0f} s", flush=True)
        write_report(report, ctx.output)
    return report


def launch_worker(argv):
    """
    train_net.py's main, given train_net.py's arguments ``argv`` (``--num-gpus 1``), in the
    worker that detectron2's ``launch()`` starts per process when the world size is > 1: it
    creates the process group (NCCL with a GPU, else gloo) of world size 1. Prints, after
    ``LAUNCH_TAG``, the backend, the world size, the result of an all-reduce of 1 on the
    training device and, after training, the CUDA memory allocated.
    """
    sys.path.insert(0, REPO)
    import torch
    import torch.distributed as dist
    from detectron2.engine import default_argument_parser
    from detectron2.engine.launch import _distributed_worker

    import train_net

    args = default_argument_parser().parse_args(argv)
    if args.num_gpus != 1 or args.num_machines != 1:
        raise SystemExit("--launch-worker runs one process: --num-gpus 1 on one machine")

    def main(args):
        device = torch.device("cuda", torch.cuda.current_device()) \
            if torch.cuda.is_available() else torch.device("cpu")
        one = torch.ones(1, device=device)
        dist.all_reduce(one)
        info = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                "all_reduce": one.item(), "device": str(device)}
        train_net.main(args)  # tears the process group down at the end
        if device.type == "cuda":
            info["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        print(LAUNCH_TAG + json.dumps(info), flush=True)

    _distributed_worker(0, main, 1, 1, 0, args.dist_url, (args,))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--output", default="output/gpu_check", help="report folder")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated, in this order: {','.join(STEPS)}")
    parser.add_argument("--cpu", action="store_true",
                        help="run the CPU half even where CUDA is available")
    parser.add_argument("--budget", type=int, default=470,
                        help="seconds for all steps together (default: 470)")
    parser.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS",
                        help="another time limit for a step (repeatable)")
    parser.add_argument("--launch-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launch_worker is not None:
        return launch_worker(args.launch_worker)

    names = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in names if s not in STEPS]
    if unknown or not names:
        parser.error(f"--steps: unknown {unknown}; known: {','.join(STEPS)}")
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    limits = {name: LIMITS[name][0 if cuda else 1] for name in STEPS}
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in STEPS or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            parser.error(f"--limit {item}: expected STEP=SECONDS with a STEP of {','.join(STEPS)}")
        limits[name] = float(seconds)
    output = os.path.abspath(args.output)
    os.makedirs(os.path.join(output, "logs"), exist_ok=True)
    report = run_steps([n for n in STEPS if n in names], Context(cuda, output), args.budget,
                       limits)
    with open(os.path.join(output, "report.md")) as f:
        print(f.read().split("\n## ")[0].rstrip())
    print(f"report: {os.path.join(args.output, 'report.json')}, report.md")
    if not cuda:
        print("--cpu: ran the CPU half only" if torch.cuda.is_available()
              else "no CUDA device: ran the CPU half only")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
