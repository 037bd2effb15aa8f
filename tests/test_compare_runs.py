"""tools/compare_runs.py: the side-by-side table and the mean / range over seeds."""
import json

import pytest

from conftest import load_tool

compare_runs = load_tool("tools/compare_runs.py")


def fake_run(root, seed, name, ap):
    run = root / f"seed{seed}" / name
    run.mkdir(parents=True)
    bbox = {m: ap + i for i, m in enumerate(compare_runs.METRICS)}
    (run / "eval_shapes_val.json").write_text(json.dumps({"bbox": bbox}))
    return str(run)


def test_rows_and_seed_summary(tmp_path, capsys):
    runs = [fake_run(tmp_path, 0, "focal", 30.0), fake_run(tmp_path, 0, "hpf", 34.0),
            fake_run(tmp_path, 1, "focal", 32.0), fake_run(tmp_path, 1, "hpf", 31.0)]
    assert compare_runs.main(runs) == 0
    out = capsys.readouterr().out
    assert "| focal | 30.0 | 31.0 |" in out and "| hpf | 31.0 | 32.0 |" in out
    # mean and range of AP over the two seeds
    assert "| focal | 2 | 31.0 (30.0-32.0) | 32.0 (31.0-33.0) |" in out
    assert "| hpf | 2 | 32.5 (31.0-34.0) |" in out


def test_unfinished_run_is_named(tmp_path):
    (tmp_path / "running").mkdir()
    with pytest.raises(FileNotFoundError, match="running"):
        compare_runs.main([str(tmp_path / "running")])


def test_size_without_ground_truth_is_a_dash(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}" / "trees"
        run.mkdir(parents=True)
        bbox = {m: 5.0 + seed for m in compare_runs.METRICS}
        bbox["APl"] = float("nan")  # detectron2's value when no ground truth is large
        (run / "eval_neon_trees_val.json").write_text(json.dumps({"bbox": bbox}))
        runs.append(str(run))
    assert compare_runs.main(runs) == 0
    out = capsys.readouterr().out
    assert "| trees | 5.0 | 5.0 | 5.0 | 5.0 | 5.0 | – |" in out
    assert out.rstrip().endswith("| 5.5 (5.0-6.0) | – |")
