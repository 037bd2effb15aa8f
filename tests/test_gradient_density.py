"""hpf.analysis.gradient_density and tools/analysis/gradient_density.py: the histograms, GHM
weights and gradient norms on hand-computed values, and the command on a tiny trained run."""
import json
import math

import pytest
import torch

from conftest import load_tool
from hpf.analysis.gradient_density import (
    GradientDensity,
    asl1_gradient_norm,
    classification_gradient_norm,
    dense_gradient_norms,
    focal_loss_gradient_norm,
    ghm_weights,
    gradient_norm_histogram,
)
from hpf.losses import GHMCLoss, GHMRLoss, sigmoid_focal_loss

gradient_density = load_tool("tools/analysis/gradient_density.py")


def test_histogram_counts_every_entry_including_the_ends():
    # 0 and the inner edges open their bin; 1 falls in the closed top bin.
    g = torch.tensor([0.0, 0.0, 0.1, 1 / 3, 0.5, 2 / 3, 0.9999, 1.0, 1.0])
    counts = gradient_norm_histogram(g, bins=3)
    assert counts.tolist() == [3, 2, 4]
    assert int(counts.sum()) == g.numel()
    assert gradient_norm_histogram(torch.zeros(0), bins=4).tolist() == [0, 0, 0, 0]
    g = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert int(gradient_norm_histogram(g, bins=30).sum()) == 1000
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gradient_norm_histogram(torch.tensor([0.5, float("nan")]))


def test_ghm_weights_by_hand_and_as_ghmc_loss_applies_them():
    # Bins [0, 1/3), [1/3, 2/3), [2/3, 1]: three easy entries, none in the middle, one hard.
    logits = torch.tensor([-3.0, -4.0, 4.0, 3.0])
    targets = torch.tensor([0.0, 0.0, 1.0, 0.0])
    g = classification_gradient_norm(logits, targets)
    assert g.tolist() == pytest.approx([torch.sigmoid(torch.tensor(-3.0)).item(),
                                        torch.sigmoid(torch.tensor(-4.0)).item(),
                                        1 - torch.sigmoid(torch.tensor(4.0)).item(),
                                        torch.sigmoid(torch.tensor(3.0)).item()])
    counts = gradient_norm_histogram(g, bins=3)
    assert counts.tolist() == [3, 0, 1]
    # beta_j = N / (R_j x non-empty bins) = 4 / (3 x 2), 0 (empty), 4 / (1 x 2); sum over
    # entries = N.
    beta = ghm_weights(counts)
    assert beta.tolist() == pytest.approx([2 / 3, 0.0, 2.0])
    assert float((beta * counts).sum()) == pytest.approx(4.0)
    # GHMCLoss without EMA: loss = sum beta_i BCE_i / N, so dloss/dx_i = beta_i (p_i - y_i) / N.
    x = logits.clone().requires_grad_(True)
    GHMCLoss(bins=3, momentum=0.0)([x.view(1, 4, 1)], [targets.view(1, 4, 1)], 1.0).backward()
    applied = x.grad * 4 / (torch.sigmoid(logits) - targets)
    assert applied.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0], rel=1e-5)


def test_asl1_and_focal_gradient_norms():
    mu = 0.02
    d = torch.tensor([0.0, mu, -mu * math.sqrt(3), 2.0])
    expected = [0.0, 1 / math.sqrt(2), math.sqrt(3) / 2, 2 / math.sqrt(4 + mu * mu)]
    assert asl1_gradient_norm(d, mu).tolist() == pytest.approx(expected, rel=1e-6)
    # The norm GHMRLoss bins (Eq. 18).
    g = GHMRLoss(mu=mu).harmonized_terms(d, torch.zeros_like(d))[3]
    assert g.tolist() == pytest.approx(expected, rel=1e-6)

    # |dFL/dx| from g against autograd of the focal loss, for y = 0 and y = 1.
    logits = torch.tensor([-6.0, -1.0, 0.0, 2.5, -2.0, 0.5, 5.0, 9.0])
    targets = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    x = logits.clone().requires_grad_(True)
    sigmoid_focal_loss(x, targets, alpha=0.25, gamma=2.0).sum().backward()
    g = classification_gradient_norm(logits, targets)
    norm = focal_loss_gradient_norm(g, targets.bool(), gamma=2.0, alpha=0.25)
    assert norm.tolist() == pytest.approx(x.grad.abs().tolist(), rel=1e-4, abs=1e-9)
    # g = 1 (p_t = 0) is finite: alpha_t x 1.
    assert focal_loss_gradient_norm(torch.tensor([1.0]), torch.tensor([True])).tolist() == [0.25]


def test_gradient_density_sums_and_contributions():
    density = GradientDensity(bins=3, thresholds=(0.1, 0.9))
    g = torch.tensor([0.0, 0.05, 0.2, 0.5, 1.0])
    positive = torch.tensor([False, False, False, True, True])
    density.add_classification(g, positive)
    density.add_regression(torch.tensor([[0.0, 0.02, 1.0, -1.0]]))
    s = density.summary()
    cls = s["classification"]
    assert cls["counts"] == [3, 1, 1] and sum(cls["counts"]) == s["num_entries"] == 5
    assert cls["positive_counts"] == [0, 1, 1]
    assert cls["fraction_below"] == {"0.1": pytest.approx(0.4), "0.9": pytest.approx(0.8)}
    assert cls["fraction_above"] == {"0.1": pytest.approx(0.6), "0.9": pytest.approx(0.2)}
    # CE: per-bin sums of g (0.25, 0.5, 1) over 1.75; GHM-C: times beta = 5 / (R_j x 3).
    assert cls["contribution"]["ce"] == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])
    ghm = [0.25 * 5 / 9, 0.5 * 5 / 3, 1.0 * 5 / 3]
    assert cls["contribution"]["ghm"] == pytest.approx([v / sum(ghm) for v in ghm])
    for values in cls["contribution"].values():
        assert sum(values) == pytest.approx(1.0)
    box = s["regression"]
    assert box["counts"] == [1, 0, 3] and s["num_box_entries"] == 4


def test_dense_gradient_norms_needs_a_dense_detector():
    with pytest.raises(TypeError, match="Linear is not a dense detector"):
        dense_gradient_norms(torch.nn.Linear(1, 1), [])


def test_command_on_a_tiny_run(analysis_run, datasets_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    out = tmp_path / "density"
    assert gradient_density.main([str(analysis_run), "--num-images", "2", "--bins", "20",
                                  "--output", str(out)]) == 0
    png = (out / "gradient_density.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    s = json.loads((out / "gradient_density.json").read_text())
    assert s["model"] == "ATSS" and s["num_images"] == 2 and len(s["bin_edges"]) == 21
    # ATSS ignores no anchor: every anchor x class is an entry.
    assert s["num_entries"] == sum(s["classification"]["counts"]) > 0
    assert s["num_entries"] % s["num_anchors"] == 0
    assert s["num_box_entries"] == sum(s["regression"]["counts"]) == 4 * s["num_positives"] > 0
    for values in s["classification"]["contribution"].values():
        assert sum(values) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "| g bin |" in printed and "fraction of entries with g < 0.01" in printed

    # The test split keeps its annotations too.
    gradient_density.main([str(analysis_run), "--num-images", "1", "--split", "test", "--bins",
                           "5", "--output", str(out)])
    s = json.loads((out / "gradient_density.json").read_text())
    assert s["split"] == "test" and s["num_images"] == 1 and s["num_positives"] > 0

    with pytest.raises(FileNotFoundError, match="model_0000001.pth"):
        gradient_density.main([str(analysis_run), "--checkpoint", "model_0000001.pth"])
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        gradient_density.main([str(tmp_path)])


def test_command_refuses_a_region_based_run(tmp_path):
    from detectron2.config import LazyConfig

    from conftest import REPO

    cfg = LazyConfig.load(f"{REPO}/configs/Shapes/faster_rcnn_R18h_FPN.py")
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    (tmp_path / "model_final.pth").touch()
    with pytest.raises(ValueError, match="GeneralizedRCNN, not a dense detector"):
        gradient_density.main([str(tmp_path)])
