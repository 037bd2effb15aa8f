"""Two gloo processes: statistics reduced across processes equal the single-process statistics
of the concatenated inputs (HPF gamma_ad per level, GHM bin counts, frozen guided ratios)."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpf.losses import (
    GHMCLoss,
    GHMRLoss,
    GuidedLossScale,
    ProgressiveFocalLoss,
    progressive_focus_params,
)

WORLD = 2
NORMALIZER = 9.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data():
    """Full inputs; rank r gets the r-th half of the rows of every tensor."""
    gen = torch.Generator().manual_seed(0)
    sizes, classes = (40, 16, 8), 6
    xs = [torch.randn(n, classes, generator=gen) * 2 for n in sizes]
    ts = []
    for level, n in enumerate(sizes):
        # Rank 0's half is positive-rich, rank 1's sparse (none at all on the last level), so
        # the mean of per-process means differs from the global mean.
        rate = torch.full((n, 1), 0.02 if level < 2 else 0.0)
        rate[: n // 2] = 0.3
        ts.append((torch.rand(n, classes, generator=gen) < rate).float())
    ghm_x = [torch.randn(60, classes, generator=gen) * (1 + i) for i in range(3)]
    ghm_t = [(torch.rand(60, classes, generator=gen) < 0.1).float() for _ in range(3)]
    box_p = [torch.randn(20, 4, generator=gen) * 0.2 for _ in range(3)]
    box_t = [torch.randn(20, 4, generator=gen) * 0.05 for _ in range(3)]
    guided = [(torch.tensor(4.0), torch.tensor(1.0)), (torch.tensor(2.0), torch.tensor(3.0))]
    return xs, ts, ghm_x, ghm_t, box_p, box_t, guided


def shard(t, rank):
    return t.chunk(WORLD)[rank]


def one_level(loss, inputs, targets):
    """A GHM loss on a pyramid of one level (GHM-C does not use the normalizer)."""
    if isinstance(loss, GHMCLoss):
        return loss([inputs], [targets], 1.0)
    return loss([inputs], [targets])


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        xs, ts, ghm_x, ghm_t, box_p, box_t, guided = make_data()
        out = {}
        lx, lt = [shard(x, rank) for x in xs], [shard(t, rank) for t in ts]
        out["params"] = [
            torch.stack(progressive_focus_params(x, t, delta=1.0)) for x, t in zip(lx, lt)
        ]
        for sampling in ("level", "all"):
            loss_fn = ProgressiveFocalLoss(sampling=sampling, delta=1.0)
            out[sampling] = (loss_fn(lx, lt, NORMALIZER).detach(), loss_fn.last_gamma)
        for name, module, xs_, ts_ in (
            ("ghmc", GHMCLoss(), ghm_x, ghm_t),
            ("ghmr", GHMRLoss(), box_p, box_t),
            ("ghmc_local", GHMCLoss(), ghm_x, ghm_t),
        ):
            module.all_reduce_stats = name != "ghmc_local"
            losses, grads = [], []
            for x, t in zip(xs_, ts_):
                x = shard(x, rank).clone().requires_grad_(True)
                loss = one_level(module, x, shard(t, rank))
                loss.backward()
                losses.append(loss.detach())
                grads.append(x.grad)
            out[name] = (torch.stack(losses), grads, module.acc_sum.clone())
        scale = GuidedLossScale(freeze_after=2)
        cls, reg = guided[rank]
        scale.scale(cls * 2, reg)  # call 1: local ratio
        scale.scale(cls, reg)  # call 2: frozen at the mean over processes
        out["guided"] = (scale.ratio.clone(), scale.scale(torch.tensor(10.0), torch.tensor(1.0)).detach())
        # The official GuidedLoss form: ratio = mean of the other losses / cls, same freezing.
        guided_loss = GuidedLossScale(mode="guided_loss", num_losses=2, freeze_after=2)
        for c in (cls * 2, cls):
            guided_loss({"loss_cls": c, "loss_box": reg}, "loss_cls", "loss_box")
        out["guided_loss"] = guided_loss.state_dict()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dist"))
    mp.spawn(_worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def test_progressive_focus_params_are_global(results):
    xs, ts = make_data()[:2]
    for level, (x, t) in enumerate(zip(xs, ts)):
        ref = torch.stack(progressive_focus_params(x, t, delta=1.0))
        for r in range(WORLD):
            torch.testing.assert_close(results[r]["params"][level], ref)
    # The test is meaningful: an average of per-process means would give another gamma.
    x, t = xs[0], ts[0]
    halves = [
        progressive_focus_params(shard(x, r), shard(t, r), delta=2.0)[0] for r in range(WORLD)
    ]
    assert abs(sum(halves).item() / 2 - progressive_focus_params(x, t, delta=2.0)[0].item()) > 1e-3


@pytest.mark.parametrize("sampling", ["level", "all"])
def test_progressive_loss_gamma_identical_and_losses_add_up(sampling, results):
    xs, ts = make_data()[:2]
    loss_fn = ProgressiveFocalLoss(sampling=sampling, delta=1.0)
    ref = loss_fn(xs, ts, NORMALIZER)
    for r in range(WORLD):
        torch.testing.assert_close(results[r][sampling][1], loss_fn.last_gamma)
    # Every process divides its share by the same global normalizer: the shares add up.
    torch.testing.assert_close(results[0][sampling][0] + results[1][sampling][0], ref)
    if sampling == "level":
        assert loss_fn.last_gamma[2].item() != 2.0  # rank 1 has no positives there


@pytest.mark.parametrize("name,cls", [("ghmc", GHMCLoss), ("ghmr", GHMRLoss)])
def test_ghm_counts_are_reduced(name, cls, results):
    data = make_data()
    xs_, ts_ = (data[2], data[3]) if name == "ghmc" else (data[4], data[5])
    single = cls()
    for it, (x, t) in enumerate(zip(xs_, ts_)):
        x = x.clone().requires_grad_(True)
        loss = one_level(single, x, t)
        loss.backward()
        # Mean over processes of their losses (what DDP's gradient averaging optimises).
        torch.testing.assert_close(
            (results[0][name][0][it] + results[1][name][0][it]) / WORLD, loss.detach()
        )
        grads = torch.cat([results[r][name][1][it] for r in range(WORLD)]) / WORLD
        torch.testing.assert_close(grads, x.grad)
    for r in range(WORLD):
        torch.testing.assert_close(results[r][name][2], single.acc_sum)


def test_ghm_per_process_option_matches_official(results):
    data = make_data()
    for r in range(WORLD):
        local = GHMCLoss()
        for it, (x, t) in enumerate(zip(data[2], data[3])):
            torch.testing.assert_close(
                results[r]["ghmc_local"][0][it], one_level(local, shard(x, r), shard(t, r)).detach()
            )
        torch.testing.assert_close(results[r]["ghmc_local"][2], local.acc_sum)
    assert not torch.equal(results[0]["ghmc_local"][2], results[1]["ghmc_local"][2])


def test_guided_ratio_frozen_to_process_mean(results):
    # Call-2 ratios: rank 0 reg/cls = 1/4 = 0.25, rank 1 = 3/2 = 1.5 -> frozen (0.25 + 1.5) / 2
    for r in range(WORLD):
        ratio, later = results[r]["guided"]
        assert ratio.item() == pytest.approx(0.875)
        assert later.item() == pytest.approx(8.75)  # 0.875 * cls 10, not the new ratio 0.1


def test_guided_loss_ratio_frozen_alike_on_every_process_and_restored(results):
    states = [results[r]["guided_loss"] for r in range(WORLD)]
    for state in states:
        assert state["ratio"].item() == pytest.approx(0.875) and int(state["num_calls"]) == 2
    # A checkpoint of either process restores the frozen ratio in a fresh module.
    fresh = GuidedLossScale(mode="guided_loss", num_losses=2, freeze_after=2)
    fresh.load_state_dict(states[1])
    out = fresh({"loss_cls": torch.tensor(10.0), "loss_box": torch.tensor(1.0)}, "loss_cls", "loss_box")
    assert fresh.frozen and out["loss_cls"].item() == pytest.approx(0.875 * 10 / 2)
