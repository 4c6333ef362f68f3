"""DistributedDataParallel over a pruned + shared model: 2 CPU processes, gloo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ._gloo import free_port, process_group, run_ranks

WORLD = 2
STEPS = 3
TIMEOUT_S = 60


def build() -> nn.Sequential:
    from torchprune_share import level_prune, register_weight_sharing

    torch.manual_seed(0)  # the same model on every rank
    net = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    level_prune(net[0], amount=0.5)
    register_weight_sharing(net[0], bits=8)  # 256 centroids + zero: an int32 index buffer
    level_prune(net[2], amount=0.7)  # pruned only: a bool mask buffer
    register_weight_sharing(net[4], bits=2, granularity="per_channel")
    level_prune(net[4], amount=0.25)  # shared, then pruned to the zero code
    register_weight_sharing(net[4], "bias", bits=1)
    return net


def snapshot(net: nn.Sequential) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    for i in (0, 2, 4):
        out[f"{i}.zeros"] = net[i].weight.detach() == 0
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    with process_group(rank, WORLD, port, TIMEOUT_S):
        net = build()
        before = snapshot(net)
        ddp = nn.parallel.DistributedDataParallel(net)  # find_unused_parameters=False
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for _ in range(STEPS):
            x, y = torch.randn(32, 16, generator=gen), torch.randn(32, 4, generator=gen)
            opt.zero_grad()
            F.mse_loss(ddp(x), y).backward()
            opt.step()
        torch.save({"before": before, "after": snapshot(net)}, f"{out_dir}/rank{rank}.pt")
        del ddp, opt  # DDP's reducer must go before its process group does


@pytest.mark.slow
def test_ddp_two_processes_identical_codebooks_and_zero_pattern(tmp_path):
    run_ranks(_worker, (free_port(), str(tmp_path)), WORLD, TIMEOUT_S)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["after"].keys() == r1["after"].keys()
    for key in r0["after"]:
        assert r0["after"][key].dtype == r1["after"][key].dtype, key
        assert torch.equal(r0["after"][key], r1["after"][key]), key  # identical on both ranks
    for r in (r0, r1):
        before, after = r["before"], r["after"]
        assert after["0.parametrizations.weight.0.index"].dtype == torch.int32
        for i in (0, 2, 4):
            assert torch.equal(after[f"{i}.zeros"], before[f"{i}.zeros"])  # zero pattern intact
        for key in ("0.parametrizations.weight.0.index", "4.parametrizations.weight.0.index"):
            assert torch.equal(after[key], before[key])  # indices untouched
        for key in ("0.parametrizations.weight.original", "4.parametrizations.weight.original"):
            assert not torch.equal(after[key], before[key])  # the codebooks did train
        assert int(after["0.zeros"].sum()) == 256 and int(after["2.zeros"].sum()) == round(
            0.7 * 1024
        )
        assert len(torch.unique(after["0.parametrizations.weight.original"])) <= 256
