"""A 2-rank (gloo, CPU) scan equals the single-process scan, on every rank."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchprune_share import level_prune
from torchprune_share.bits_analysis import perform_bits_analysis
from torchprune_share.data import load_digits, make_loaders
from torchprune_share.models import LeNet300100
from torchprune_share.sensitivity import perform_sensitivity_analysis
from torchprune_share.training import train

from ._gloo import free_port, process_group, run_ranks

SPARSITIES = [0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0]
BITS = [1, 2, 4]
WORLD = 2
TIMEOUT_S = 60


def _scans(model, loader, **kwargs) -> tuple[dict, dict]:
    """The three scans' results (with baselines), and how many evaluations each made here."""
    sens = perform_sensitivity_analysis(model, loader, SPARSITIES, progress=False, **kwargs)
    stop = perform_sensitivity_analysis(
        model, loader, SPARSITIES, stop_below=80.0, progress=False, **kwargs
    )
    bits = perform_bits_analysis(model, loader, BITS, progress=False, **kwargs)
    scans = {"sens": sens, "stop": stop, "bits": bits}
    results = {k: (dict(r), r.baseline) for k, r in scans.items()}
    return results, {k: r.timings["evaluations"] for k, r in scans.items()}


def _model_and_loader(path: str):
    saved = torch.load(path, weights_only=True)
    model = LeNet300100(8)
    level_prune(model.fc2, "weight", amount=0.5)  # a reparametrized tensor in the grid too
    model.load_state_dict(saved["state"])
    loader = DataLoader(TensorDataset(saved["x"], saved["y"]), batch_size=128)
    return model, loader


def _worker(rank: int, port: int, tmp: str) -> None:
    with process_group(rank, WORLD, port, TIMEOUT_S):
        model, loader = _model_and_loader(os.path.join(tmp, "setup.pt"))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        out = dict(zip(("dist", "evals"), _scans(model, loader)))
        if rank == 0:
            out["local"], out["local_evals"] = _scans(model, loader, distributed=False)
        out["restored"] = all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_rank_scan_equals_single_process(tmp_path):
    torch.manual_seed(0)
    splits = load_digits(seed=0)
    train_loader, _, _ = make_loaders(splits, seed=0)
    model = LeNet300100(8)
    level_prune(model.fc2, "weight", amount=0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model, train_loader, epochs=3, lr=0.1, progress=False)
        x, y = splits.val.tensors
        torch.save({"state": model.state_dict(), "x": x, "y": y}, tmp_path / "setup.pt")
        single, evals = _scans(*_model_and_loader(str(tmp_path / "setup.pt")))
    finally:
        torch.set_num_threads(threads)

    run_ranks(_worker, (free_port(), str(tmp_path)), WORLD, TIMEOUT_S)

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in results:
        assert r["restored"]
        assert r["dist"] == results[0]["local"]  # every rank holds the whole grid
        assert r["dist"] == single  # and equals this process's scan, bit for bit
    # The grid was split: the ranks' evaluations add up to the single process's.
    assert results[0]["local_evals"] == evals
    for k, n in evals.items():
        per_rank = [r["evals"][k] for r in results]
        assert sum(per_rank) == n and max(per_rank) < n, (k, per_rank, n)
    sens, _ = single["sens"]
    assert list(sens) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert all(list(levels) == SPARSITIES for levels in sens.values())
    stop, _ = single["stop"]
    assert any(len(levels) < len(SPARSITIES) for levels in stop.values())  # early stops happened
