"""compression_summary: per-tensor values, estimated bytes, totals, and the three outputs."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torchprune_share import level_prune, register_weight_sharing
from torchprune_share.summary import COLUMNS, compression_summary, sparse_entries


def relative_index_bits(value: torch.Tensor, value_bits: int, p: int) -> int:
    """Brute force: walk the flat tensor, one entry per nonzero, a filler per 2**p gap."""
    entries, gap = 0, 0
    for v in value.reshape(-1).tolist():
        gap += 1
        if v != 0:
            entries += math.ceil(gap / 2**p)
            gap = 0
    return entries * (value_bits + p)


def best_sparse_bytes(value: torch.Tensor, value_bits: int, p: int | None = None) -> int:
    ps = [p] if p else range(1, 17)
    return min((relative_index_bits(value, value_bits, q) + 7) // 8 for q in ps)


@pytest.fixture
def net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(40, 10, bias=(i == 0)) for i in range(5)])
    level_prune(net[1], "weight", amount=0.7)  # masked
    register_weight_sharing(net[2], "weight", bits=2)  # shared, dense
    level_prune(net[3], "weight", amount=0.5)
    register_weight_sharing(net[3], "weight", bits=3)  # pruned and shared
    prune.l1_unstructured(net[4], "weight", amount=0.6)  # torch's hooks
    return net


@pytest.mark.parametrize("index_bits", [None, 5])
def test_rows_match_hand_computation(net, index_bits):
    s = compression_summary(net, index_bits=index_bits)
    names = ["0.weight", "0.bias", "1.weight", "2.weight", "3.weight", "4.weight"]
    assert [r.name for r in s.rows] == names
    rows = {r.name: r for r in s.rows}
    for name, r in rows.items():
        module = net[int(name[0])]
        value = getattr(module, name.split(".")[1]).detach()
        assert r.shape == tuple(value.shape) and r.numel == value.numel()
        assert r.nonzeros == int((value != 0).sum())
        assert r.sparsity == pytest.approx(1 - r.nonzeros / r.numel)
        assert r.distinct_values == len(torch.unique(value))
        assert r.dense_bytes == 4 * value.numel()
        assert r.ratio == pytest.approx(r.dense_bytes / r.estimated_bytes)
    assert rows["1.weight"].nonzeros == 120 and rows["4.weight"].nonzeros == 160
    assert [rows[n].bits for n in names] == [32, 32, 32, 2, 3, 32]
    # Plain and pruned tensors: fp32 dense or fp32 values with a relative index.
    for name in ("0.weight", "0.bias", "1.weight", "4.weight"):
        value = getattr(net[int(name[0])], name.split(".")[1]).detach()
        want = min(4 * value.numel(), best_sparse_bytes(value, 32, index_bits))
        assert rows[name].estimated_bytes == want, name
    assert rows["0.weight"].format == "dense" and rows["1.weight"].format.startswith("sparse (p=")
    # Shared tensors: dense codes or relative index + codes, plus the fp32 codebook.
    w2, w3 = net[2].weight.detach(), net[3].weight.detach()
    k2 = net[2].parametrizations.weight.original.numel()
    k3 = net[3].parametrizations.weight.original.numel()
    assert (k2, k3) == (4, 8)
    assert (
        rows["2.weight"].estimated_bytes
        == min(400 * 2 // 8, best_sparse_bytes(w2, 2, index_bits)) + 4 * k2
    )
    # 8 centroids plus the pruned zero need 4 bits per dense code; 3 in the sparse format.
    assert (
        rows["3.weight"].estimated_bytes
        == min(400 * 4 // 8, best_sparse_bytes(w3, 3, index_bits)) + 4 * k3
    )
    sparse_wins = best_sparse_bytes(w3, 3, index_bits) < 400 * 4 // 8
    assert rows["3.weight"].format.startswith("sparse codes" if sparse_wins else "codes")
    t = s.total
    assert t.name == "total" and t.numel == sum(r.numel for r in s.rows) == 2010
    assert t.nonzeros == sum(r.nonzeros for r in s.rows)
    assert t.estimated_bytes == sum(r.estimated_bytes for r in s.rows)
    assert t.dense_bytes == 4 * 2010 and t.ratio > 2


def test_sparse_entries_fillers():
    v = torch.zeros(100)
    v[[0, 40, 41, 99]] = 1.0
    # gaps 1, 40, 1, 58 with p = 4 (16 per entry): 1 + 3 + 1 + 4 entries
    assert sparse_entries(v, 4) == 9
    assert relative_index_bits(v, 0, 4) == 9 * 4


def test_outputs_table_csv_markdown(net, tmp_path):
    s = compression_summary(net, ["1.weight", "3.weight"])
    text = str(s)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["tensor", "shape", "numel"]
    assert lines[2].startswith("1.weight") and lines[3].startswith("3.weight")
    assert lines[5].startswith("total") and "estimate" in lines[-1]
    assert repr(s).startswith("CompressionSummary(2 tensors, 800 entries")

    path = s.to_csv(tmp_path / "summary.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    assert [r["name"] for r in rows] == ["1.weight", "3.weight", "total"]
    assert (
        rows[0]["shape"] == "10x40" and rows[0]["numel"] == "400" and rows[0]["nonzeros"] == "120"
    )
    assert float(rows[0]["sparsity"]) == pytest.approx(0.7)
    assert rows[1]["bits"] == "3" and rows[2]["bits"] == ""
    assert int(rows[2]["estimated_bytes"]) == s.total.estimated_bytes
    assert float(rows[2]["ratio"]) == pytest.approx(s.total.ratio)

    md = s.to_markdown(tmp_path / "summary.md")
    assert (tmp_path / "summary.md").read_text() == md
    md_lines = md.splitlines()
    assert md_lines[0].startswith("| tensor | shape |") and md_lines[1].startswith(
        "| --- | --- | ---: |"
    )
    assert md_lines[4].startswith("| **total** |") and "estimate" in md_lines[-1]
    with pytest.raises(ValueError, match="index_bits"):
        compression_summary(net, index_bits=0)


def test_star_means_the_default_weights_as_in_scans_and_policies():
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    names = [r.name for r in compression_summary(net, ["*"]).rows]
    assert names == ["0.weight", "2.weight"]
    names = [r.name for r in compression_summary(net, ["*", "0.bias"]).rows]
    assert names == ["0.weight", "2.weight", "0.bias"]
