"""The scripts of benchmarks/ run end to end on a tiny input and print a complete table."""
import os
import re

import pytest

from conftest import REPO, load_tool

benchmark_detectors = load_tool("benchmarks/benchmark_detectors.py")
benchmark_rcnn = load_tool("benchmarks/benchmark_rcnn.py")


def table_rows(out, num_cells):
    """The cells of every markdown table row of ``out`` that has ``num_cells`` cells."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("|")]
    return [r for r in rows if len(r) == num_cells]


def test_benchmark_detectors_prints_every_loss_with_paired_ratios(capsys):
    benchmark_detectors.main(["--size", "64", "--reps", "1", "--rounds", "1", "--loss-reps", "1",
                              "--threads", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = {r[0]: r for r in table_rows(out, 6) if r[0] in benchmark_detectors.LOSSES}
    assert set(rows) == set(benchmark_detectors.LOSSES)
    for name, (_, step_ms, ratio, spread, loss_ms, extra) in rows.items():
        low, high = (float(x) for x in spread.split("-"))
        assert 0 < low <= float(ratio) <= high, name  # the median lies within the pairs
        assert float(step_ms) > 0 and float(loss_ms) > 0, name
        assert re.fullmatch(r"[+-]\d+\.\d\d%", extra), name
    match = re.search(r"ATSS / FCOS = (\d+\.\d+)", out)
    assert match and float(match.group(1)) > 0


def test_recorded_loss_inputs_are_detached_copies():
    import torch
    from hpf.losses import FocalLoss

    loss = benchmark_detectors.record_inputs(FocalLoss())
    logits = [torch.randn(1, 6, 3, requires_grad=True), torch.randn(1, 2, 3, requires_grad=True)]
    targets = [torch.zeros(1, 6, 3), torch.zeros(1, 2, 3)]
    value = loss(logits, targets, 1.0)
    value.backward()  # the recording does not cut the graph
    assert logits[0].grad is not None
    recorded, rec_targets, normalizer, valid = loss.inputs
    assert all(not r.requires_grad for r in recorded) and normalizer == 1.0 and valid is None
    assert torch.equal(recorded[1], logits[1].detach()) and rec_targets is targets
    alone = benchmark_detectors.time_loss_alone(loss, 2, torch.device("cpu"))
    assert alone > 0
    assert torch.allclose(loss(recorded, targets, 1.0), value)  # same inputs, same value


def test_benchmark_losses_prints_every_loss_with_paired_ratios(capsys):
    import torch

    benchmark_losses = load_tool("benchmarks/benchmark_losses.py")
    benchmark_losses.main(["--anchors", "40,10,3", "--classes", "5", "--positives", "4",
                           "--reps", "1", "--warmup", "0", "--pairs", "3", "--threads", "1",
                           "--device", "cpu"])
    out = capsys.readouterr().out
    inputs = benchmark_losses.make_inputs(2, 5, 4, torch.device("cpu"), anchors=(40, 10, 3))
    names = set(benchmark_losses.cases(inputs))
    timed = {r[0]: r for r in table_rows(out, 4) if r[0] in names}
    paired = {r[0]: r for r in table_rows(out, 5) if r[0] in names}
    assert set(timed) == names and set(paired) == names - {benchmark_losses.BASE}
    assert float(timed[benchmark_losses.BASE][2]) == 1.0
    assert all(float(r[1]) > 0 for r in timed.values())
    for name, (_, median, iqr, spread, fastest) in paired.items():
        q1, q3 = (float(x) for x in iqr.split("-"))
        low, high = (float(x) for x in spread.split("-"))
        assert 0 < low <= q1 <= float(median) <= q3 <= high, name  # the median of the pairs
        assert float(fastest) > 0, name
    assert "3 interleaved pairs per loss" in out
    assert re.search(r"gamma_ad per level in these inputs: \[[\d., ]+\]", out)


def test_benchmark_rcnn_prints_time_and_memory_ratios(capsys):
    benchmark_rcnn.main(["--height", "160", "--width", "224", "--pairs", "2", "--rounds", "1",
                         "--threads", "1", "--device", "cpu", "--models", "Cascade R-CNN",
                         "--post-nms-topk", "50"])
    out = capsys.readouterr().out
    rows = {r[1]: r for r in table_rows(out, 8) if r[0] == "Cascade R-CNN"}
    assert set(rows) == {"baseline", "Sampling-Free"}
    # 50 proposals + 10 ground-truth boxes: fewer than the baseline's 512, so both train on
    # all of them (the counts with more proposals are tested in test_two_stage.py).
    assert float(rows["Sampling-Free"][2]) == float(rows["baseline"][2]) == 60
    low, high = (float(x) for x in rows["Sampling-Free"][5].split("-"))
    assert 0 < low <= float(rows["Sampling-Free"][4]) <= high
    assert float(rows["Sampling-Free"][6]) > 0


def test_benchmark_rcnn_variants_keep_the_baseline_and_name_unknown_ones():
    chosen = benchmark_rcnn.selected_variants(["Faster R-CNN"], ["Sampling-Free"])
    assert chosen == {"Faster R-CNN": {
        "baseline": "faster_rcnn_R_50_FPN_1x.py",
        "Sampling-Free": "faster_rcnn_sampling_free_R_50_FPN_1x.py"}}
    assert len(benchmark_rcnn.selected_variants(["Faster R-CNN"])["Faster R-CNN"]) == 4
    with pytest.raises(SystemExit, match="RPN-only"):
        benchmark_rcnn.selected_variants(["Faster R-CNN"], ["RPN-only"])


def test_benchmark_rcnn_zeroes_every_box_delta_layer():
    import torch

    model = benchmark_rcnn.build_model("cascade_rcnn_R_50_FPN_1x.py", torch.device("cpu"))
    layers = [model.proposal_generator.rpn_head.anchor_deltas]
    layers += [p.bbox_pred for p in model.roi_heads.box_predictor]
    assert len(layers) == 4
    for layer in layers:
        assert not layer.weight.any() and not layer.bias.any()
        assert layer.weight.requires_grad


def test_profile_step_reports_every_pooled_roi_and_applies_overrides(capsys):
    profile_step = load_tool("benchmarks/profile_step.py")

    config = os.path.join(REPO, "configs", "Shapes", "faster_rcnn_R18h_FPN.py")
    profile_step.main(["--config-file", config, "--threads", "1",
                       "--rows", "3", "dataloader.train.total_batch_size=2",
                       "model.roi_heads.batch_size_per_image=64"])
    out = capsys.readouterr().out
    assert re.search(r"step: \d+\.\d+ s", out)
    # One pooler call in the timed step; 64 sampled RoIs per image (the override, not the
    # config's 128), 2 images.
    calls = re.findall(r"box pooler call \d+: (\d+) RoIs, mean side (\d+) px", out)
    assert len(calls) == 1 and int(calls[0][0]) == 2 * 64 and int(calls[0][1]) > 0
    assert "Self CPU time total" in out


def test_benchmark_coco_eval_prints_the_ratio_and_equal_stats(capsys):
    benchmark_coco_eval = load_tool("benchmarks/benchmark_coco_eval.py")

    benchmark_coco_eval.main(["--images", "40", "--dets-per-image", "20", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = {r[0]: r for r in table_rows(out, 7)}
    assert {"official (pycocotools)", "faster-coco-eval"} <= set(rows)
    assert float(rows["official (pycocotools)"][6]) == 1.0
    match = re.search(r"official / faster = (\d+\.\d\d)x \(evaluate\+accumulate\+summarize\), "
                      r"(\d+\.\d\d)x with loadRes", out)
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0
    assert "stats equal: True" in out and "precision, recall, scores equal: True" in out
    assert re.search(r"^40 images, \d+ ground truths \(\d+ crowd\), 800 detections, 80 classes",
                     out, re.M)


def test_benchmark_level_statistics_prints_paired_ratios(capsys):
    benchmark = load_tool("benchmarks/benchmark_level_statistics.py")
    benchmark.main(["--pairs", "2", "--threads", "1", "--models", "ATSS shapes"])
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| ATSS shapes |")]
    assert len(row) == 1
    median, iqr, span = row[0].split("|")[3:6]
    lo, hi = map(float, span.split("-"))
    assert lo <= float(median) <= hi and lo > 0


def test_benchmark_one_stage_detectors_prints_paired_ratios_to_atss(capsys):
    benchmark = load_tool("benchmarks/benchmark_one_stage_detectors.py")
    benchmark.main(["--size", "64", "--pairs", "2", "--threads", "1", "--device", "cpu",
                    "--detectors", "tood"])
    rows = [r for r in table_rows(capsys.readouterr().out, 9) if r[0] not in ("detector", "---")]
    assert [r[0] for r in rows] == ["tood"]
    cells = rows[0]
    for step_ms, ratio, iqr, extremes in (cells[1:5], cells[5:9]):
        low, high = (float(x) for x in extremes.split("-"))
        q1, q3 = (float(x) for x in iqr.split("-"))
        assert float(step_ms) > 0
        assert 0 < low <= q1 <= float(ratio) <= q3 <= high
