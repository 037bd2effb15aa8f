"""hpf.analysis.level_summaries and the tools that draw its summaries
(tools/analysis/level_discrepancy.py, tools/analysis/gradient_drift.py): hand-computed
Wasserstein distances, proportions and gradient shares on synthetic records, and both tools on
a synthetic and on a real run."""
import json
import math
import os

import numpy as np
import pytest

from conftest import load_tool
from hpf.analysis.level_summaries import (
    gradient_shares, positive_proportions, read_level_statistics, summarize_proportions,
    wasserstein_distance,
)

level_discrepancy = load_tool("tools/analysis/level_discrepancy.py")
gradient_drift = load_tool("tools/analysis/gradient_drift.py")

CATEGORIES = ("pos_hard", "pos_easy", "neg_hard", "neg_easy")


def record(iteration, positives, grad=None, levels=("p3", "p4"), threshold=0.6931):
    """A level_statistics.json record; counts and losses are only placeholders."""
    grad = grad or {c: [1.0] * len(levels) for c in CATEGORIES}
    zeros = {c: [0] * len(levels) for c in CATEGORIES}
    return {"iteration": iteration, "threshold": threshold, "world_size": 1,
            "levels": list(levels), "anchors": [100] * len(levels), "positives": list(positives),
            "count": zeros, "loss": zeros, "grad": grad}


def write_records(folder, records, tail=""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "level_statistics.json"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write(tail)
    return str(folder)


def synthetic_run(folder, num_iterations=12, seed=0):
    """Five levels; the positives drift from P3 to P4; hard gradients shrink over training."""
    rng = np.random.default_rng(seed)
    levels = ("p3", "p4", "p5", "p6", "p7")
    records = []
    for i in range(num_iterations):
        positives = rng.integers(0, 10, size=5).tolist()
        if i == 3:
            positives = [0] * 5  # a batch without positives: skipped
        hard = 1.0 - i / num_iterations
        grad = {"pos_hard": [hard] * 5, "pos_easy": [0.1] * 5,
                "neg_hard": [hard / 2] * 5, "neg_easy": [1.0] * 5}
        records.append(record(i, positives, grad, levels))
    return write_records(folder, records)


def test_wasserstein_distance_by_hand():
    # Same-size samples: the distance is the mean gap between the sorted values, here 5.
    assert wasserstein_distance([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    assert wasserstein_distance([3, 0, 1], [8, 5, 6]) == pytest.approx(5.0)  # order is free
    assert wasserstein_distance([1, 2], [1, 2]) == 0.0
    # Different sizes, u = [0, 1], v = [0, 0, 3]; the merged support 0, 1, 3 gives two
    # intervals: on [0, 1) F_u = 1/2 and F_v = 2/3 (|diff| 1/6, width 1); on [1, 3) F_u = 1
    # and F_v = 2/3 (|diff| 1/3, width 2): 1/6 + 2/3 = 5/6.
    assert wasserstein_distance([0, 1], [0, 0, 3]) == pytest.approx(5 / 6)
    assert wasserstein_distance([0, 0, 3], [0, 1]) == pytest.approx(5 / 6)
    # A point mass against a sample: the mean absolute deviation from the point.
    assert wasserstein_distance([2.0], [0.0, 1.0, 5.0]) == pytest.approx((2 + 1 + 3) / 3)
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_distance([], [1.0])


def test_positive_proportions_skip_batches_without_positives():
    records = [record(0, [1, 3]), record(1, [0, 0]), record(2, [2, 2])]
    result = positive_proportions(records)
    assert result.values.tolist() == [[0.25, 0.75], [0.5, 0.5]]
    assert result.iterations.tolist() == [0, 2]
    assert result.skipped == 1
    summary = summarize_proportions(result.values, best=1)
    assert summary["mean"].tolist() == pytest.approx([0.375, 0.625])
    assert summary["std"].tolist() == pytest.approx([0.125, 0.125])
    # P3 {0.25, 0.5} against P4 {0.75, 0.5}: sorted gaps 0.25 and 0.25.
    assert summary["d_was"].tolist() == pytest.approx([0.25, 0.0])


def test_gradient_shares_by_hand():
    grad = {"pos_hard": [1.0, 2.0], "pos_easy": [0.5, 0.5],
            "neg_hard": [0.0, 1.0], "neg_easy": [3.0, 2.0]}
    r = record(0, [1, 1], grad)
    # All entries: hard 1 + 2 + 0 + 1 = 4, easy 0.5 + 0.5 + 3 + 2 = 6.
    assert gradient_shares(r) == pytest.approx((0.4, 0.6))
    assert gradient_shares(r, "positive") == pytest.approx((0.75, 0.25))  # 3 vs 1
    assert gradient_shares(r, "negative") == pytest.approx((1 / 6, 5 / 6))  # 1 vs 5
    assert gradient_shares(r, levels=[0]) == pytest.approx((1 / 4.5, 3.5 / 4.5))
    # Several records: arrays; a record without positive gradient gives NaN, not 0 / 0.
    empty = record(1, [0, 0], {"pos_hard": [0, 0], "pos_easy": [0, 0],
                               "neg_hard": [1, 1], "neg_easy": [1, 1]})
    hard, easy = gradient_shares([r, empty], "positive")
    assert hard[0] + easy[0] == pytest.approx(1.0)
    assert math.isnan(hard[1]) and math.isnan(easy[1])
    hard, easy = gradient_shares([r, empty])
    assert (hard + easy).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="samples"):
        gradient_shares(r, "hard")


def test_read_level_statistics_partial_line_resume_and_errors(tmp_path):
    run = write_records(tmp_path / "run", [record(0, [1, 1]), record(1, [2, 0]),
                                           record(1, [0, 2])], tail='{"iteration": 2, "thr')
    records = read_level_statistics(run)  # the folder or the file
    assert [r["iteration"] for r in records] == [0, 1]
    assert records[1]["positives"] == [0, 2]  # the resumed run's line wins
    with pytest.raises(FileNotFoundError, match="level_statistics.json"):
        read_level_statistics(str(tmp_path / "missing"))
    only_partial = write_records(tmp_path / "partial", [], tail='{"iteration": 0, "th')
    with pytest.raises(ValueError, match="level_statistics.json has no complete record"):
        read_level_statistics(only_partial)


def _check_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_level_discrepancy_synthetic(tmp_path, capsys):
    runs = [synthetic_run(tmp_path / "a", seed=0), synthetic_run(tmp_path / "b", seed=1)]
    output = tmp_path / "out" / "discrepancy.png"
    assert level_discrepancy.main(runs + ["--labels", "focal", "hpf", "--best-level", "p4",
                                          "--output", str(output)]) == 0
    _check_png(output)
    table = capsys.readouterr().out
    assert "| focal | P4 (best) |" in table and "| hpf | P7 |" in table
    assert "| 11 | 1 |" in table  # 11 iterations kept, the one without positives skipped

    # The numbers of the table are those of the library.
    proportions = positive_proportions(read_level_statistics(runs[0])).values
    d = wasserstein_distance(proportions[:, 1], proportions[:, 0])
    assert f"| focal | P3 | {proportions[:, 0].mean():.4g} | " in table
    assert f" | {d:.4g} | 11 | 1 |" in table

    # The best level from a level-AP json (both formats), and by default.
    ap = tmp_path / "level_ap.json"
    ap.write_text(json.dumps({"runs": [{"label": "hpf", "levels": {"P5": {"AP": 40.0}}},
                                       {"label": "focal", "levels": {"P6": {"AP": 30.0},
                                                                     "P3": {"AP": 10.0}}}]}))
    level_discrepancy.main(runs + ["--labels", "focal", "hpf", "--level-ap", str(ap),
                                   "--output", str(tmp_path / "out")])
    table = capsys.readouterr().out
    assert "| focal | P6 (best) |" in table and "| hpf | P5 (best) |" in table
    _check_png(tmp_path / "out" / "level_discrepancy.png")
    # level_ap.py's json: matched by folder before label; a level without ground truth has AP
    # null.
    ap.write_text(json.dumps({"runs": [
        {"label": "x", "run_dir": runs[1], "levels": {"P3": {"AP": 1.0}, "P4": {"AP": None}}},
        {"label": "y", "run_dir": runs[0], "levels": {"P3": {"AP": None}, "P4": {"AP": 2.0}}},
    ]}))
    level_discrepancy.main(runs + ["--level-ap", str(ap), "--output", str(output)])
    table = capsys.readouterr().out
    assert "| a | P4 (best) |" in table and "| b | P3 (best) |" in table
    ap.write_text(json.dumps({"P3": 1.0, "P7": 2.0}))
    level_discrepancy.main(runs[:1] + ["--level-ap", str(ap), "--output", str(output)])
    assert "| a | P7 (best) |" in capsys.readouterr().out
    level_discrepancy.main(runs[:1] + ["--output", str(output)])
    best = int(np.argmax(proportions.mean(axis=0)))
    assert f"| a | P{3 + best} (best) |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--best-level P9"):
        level_discrepancy.main(runs[:1] + ["--best-level", "P9", "--output", str(output)])


def test_gradient_drift_synthetic(tmp_path, capsys):
    runs = [synthetic_run(tmp_path / "a"), synthetic_run(tmp_path / "b")]
    assert gradient_drift.main(runs + ["--smooth", "3", "--output", str(tmp_path)]) == 0
    _check_png(tmp_path / "gradient_drift.png")
    out = capsys.readouterr().out
    assert "t = 0.6931" in out
    # Positives at iteration i: hard h = 1 - i / 12 per level against easy 0.1: the first
    # three iterations (h = 1, 11/12, 10/12) average h / (h + 0.1) to:
    start = np.mean([h / (h + 0.1) for h in (1, 11 / 12, 10 / 12)])
    end = np.mean([h / (h + 0.1) for h in (3 / 12, 2 / 12, 1 / 12)])
    assert f"| a | positive | 0-11 | {start:.3g} | " in out
    assert out.count(f" | {end:.3g} |") >= 2  # both runs


def test_level_tools_on_a_real_run(analysis_run, tmp_path, capsys):
    records = read_level_statistics(str(analysis_run))
    assert len(records) == 8 and records[0]["levels"] == ["p3", "p4", "p5", "p6", "p7"]
    hard, easy = gradient_shares(records)
    assert np.allclose(hard + easy, 1.0)
    assert level_discrepancy.main([str(analysis_run), "--output", str(tmp_path / "d.png")]) == 0
    assert "(best)" in capsys.readouterr().out
    _check_png(tmp_path / "d.png")
    assert gradient_drift.main([str(analysis_run), "--output", str(tmp_path / "g.png")]) == 0
    assert "| negative | 0-7 |" in capsys.readouterr().out
    _check_png(tmp_path / "g.png")
