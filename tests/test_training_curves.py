"""tools/analysis/training_curves.py: reading metrics.json (a killed run's partial line, a
resumed run's repeated iterations), the trailing moving mean, the panels, and the PNG and
table on a synthetic and a real run."""
import json
import os

import numpy as np
import pytest

from conftest import load_tool

training_curves = load_tool("tools/analysis/training_curves.py")


def write_metrics(folder, lines, tail=""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
        f.write(tail)
    return str(folder)


def hpf_metrics(num_iterations=10, scale=1.0):
    lines = []
    for i in range(num_iterations):
        line = {"iteration": i, "total_loss": scale * (3.0 - 0.1 * i), "loss_cls": 1.0 - 0.05 * i,
                "loss_box_reg": 1.0, "lr": 0.01, "time": 0.3, "num_pos_anchors": 10.0}
        for k in range(5):
            line.update({f"gamma_ad/level{k}": 2.0 + 0.1 * k, f"alpha_ad/level{k}": 0.25,
                         f"num_pos/level{k}": float(k + i)})
        lines.append(line)
    lines.append({"iteration": num_iterations, "bbox/AP": 12.5, "bbox/AP50": 30.0,
                  "bbox/AP-circle": 5.0})
    return lines


def test_moving_average_is_trailing():
    assert training_curves.moving_average([1, 2, 3, 4, 5], 2).tolist() == [1, 1.5, 2.5, 3.5, 4.5]
    assert training_curves.moving_average([1, 2, 3], 1).tolist() == [1, 2, 3]
    assert training_curves.moving_average([1, 2, 3], 10).tolist() == [1, 1.5, 2]
    assert training_curves.moving_average([], 3).size == 0
    # The window is given in iterations: 100 iterations logged every 20 are 5 points.
    assert training_curves.window_points([19, 39, 59, 79], 100) == 5
    assert training_curves.window_points([19, 39], 5) == 1
    assert training_curves.window_points([7], 20) == 20


def test_read_metrics_partial_line_and_resume(tmp_path):
    lines = [{"iteration": 0, "total_loss": 2.0}, {"iteration": 1, "total_loss": 1.5},
             {"iteration": 1, "total_loss": 1.4, "lr": float("nan")},  # resumed: kept
             {"iteration": 1, "bbox/AP": 3.0}]  # an evaluation line of the same iteration
    run = write_metrics(tmp_path / "run", lines, tail='{"iteration": 2, "total_lo')
    series = training_curves.read_metrics(run)
    assert series["total_loss"][0].tolist() == [0, 1]
    assert series["total_loss"][1].tolist() == [2.0, 1.4]
    assert series["bbox/AP"][1].tolist() == [3.0]
    assert "lr" not in series  # non-finite values are left out

    empty = write_metrics(tmp_path / "empty", [], tail='{"iteration": 0, "to')
    with pytest.raises(ValueError, match=r"empty/metrics.json has no usable line"):
        training_curves.read_metrics(empty)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        training_curves.read_metrics(str(tmp_path / "missing"))


def test_panels_and_level_names(tmp_path):
    keys = set(hpf_metrics()[0]) | {"bbox/AP", "bbox/AP50", "bbox/AP-circle", "guided_ratio",
                                    "rpn/guided_ratio", "sigma_sq/loss_cls", "delta_sq"}
    panels = {title: members for title, members, _ in training_curves.panels_of(
        keys, ["P3", "P4", "P5", "P6", "P7"])}
    assert list(panels)[:3] == ["total_loss", "loss_box_reg", "loss_cls"]
    assert [m for _, m in panels["positives per image per level"]] == ["P3", "P4", "P5", "P6",
                                                                      "P7"]
    assert [k for k, _ in panels["evaluation AP"]] == ["bbox/AP", "bbox/AP50"]  # no per class
    assert [m for _, m in panels["guided ratio r (Sampling-Free)"]] == ["r", "rpn"]
    assert [k for k, _ in panels["learned weights (Sampling-Free)"]] == ["delta_sq",
                                                                        "sigma_sq/loss_cls"]
    assert "time" not in panels and "num_pos_anchors" not in panels

    run = tmp_path / "run"
    run.mkdir()
    assert training_curves.level_names(str(run)) == ["P3", "P4", "P5", "P6", "P7"]
    (run / "config.yaml").write_text("model:\n  head_in_features: [p2, p3, p4]\n")
    assert training_curves.level_names(str(run)) == ["P2", "P3", "P4"]


def test_training_curves_synthetic_with_partial_line(tmp_path, capsys):
    a = write_metrics(tmp_path / "a", hpf_metrics(), tail='{"iteration": 11, "total_')
    b = write_metrics(tmp_path / "b", hpf_metrics(scale=2.0))
    output = tmp_path / "curves.png"
    assert training_curves.main([a, b, "--smooth", "4", "--labels", "focal", "hpf",
                                 "--output", str(output)]) == 0
    assert os.path.getsize(output) > 1000
    out = capsys.readouterr().out
    assert "| key | focal | hpf |" in out
    # Last smoothed total_loss: the mean of the last 4 points, 3 - 0.1 x (6, 7, 8, 9) = 2.25.
    assert f"| total_loss | 2.25 | {2 * 2.25:.4g} |" in out
    assert "| num_pos/level4 (P7) | 11.5 | 11.5 |" in out
    assert "| bbox/AP | 12.5 | 12.5 |" in out and "time" not in out
    # The default output: the first run's folder.
    training_curves.main([a, "--smooth", "1"])
    assert os.path.getsize(os.path.join(a, "training_curves.png")) > 1000
    with pytest.raises(ValueError, match="--labels"):
        training_curves.main([a, b, "--labels", "one"])


def test_training_curves_on_a_real_run(analysis_run, tmp_path, capsys):
    series = training_curves.read_metrics(str(analysis_run))
    assert "total_loss" in series and "bbox/AP" in series
    assert training_curves.main([str(analysis_run), "--output", str(tmp_path)]) == 0
    assert os.path.getsize(tmp_path / "training_curves.png") > 1000
    out = capsys.readouterr().out
    assert "| gamma_ad/level0 (P3) |" in out and "| bbox/AP |" in out
    assert np.isfinite(series["total_loss"][1]).all()
