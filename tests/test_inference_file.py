"""load_compressed(..., inference=True): inference modules built straight from a .tpsc file."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchprune_share import (
    CompressedConv2d,
    CompressedFileError,
    CompressedLinear,
    bake,
    level_prune,
    load_compressed,
    register_weight_sharing,
    save_compressed,
)


def _make() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
        nn.Embedding(4, 2),
    )


def _compressed() -> nn.Module:
    torch.manual_seed(0)
    m = _make()
    level_prune(m[0], amount=0.5)
    register_weight_sharing(m[0], bits=4, granularity="per_channel")
    level_prune(m[3], amount=0.9)
    register_weight_sharing(m[3], bits=4)
    register_weight_sharing(m[5], bits=3, granularity="per_channel", channel_axis=1)
    register_weight_sharing(m[6], bits=1)  # not a Linear/Conv: stays parametrized
    return m


def _forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return nn.Sequential(*list(m)[:6])(x)


def test_file_route_matches_the_baked_model(tmp_path):
    m = _compressed()
    path = tmp_path / "m.tpsc"
    save_compressed(m, path)
    fresh = load_compressed(_make(), path, inference=True)
    assert isinstance(fresh[0], CompressedConv2d)
    assert isinstance(fresh[3], CompressedLinear) and isinstance(fresh[5], CompressedLinear)
    assert torch.equal(fresh[6].weight, m[6].weight)  # the embedding loaded as before
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _forward(bake(copy.deepcopy(m)), x).detach()
    with torch.inference_mode():
        y = _forward(fresh, x)
    assert float((y - ref).abs().max() / ref.abs().max()) <= 1e-5
    # The 90 % pruned 4-bit layer holds far less than its dense fp32 weight.
    assert fresh[3].nbytes * 8 < 64 * 288 * 4


def test_file_route_refuses_bad_input_and_leaves_the_model(tmp_path):
    m = _compressed()
    path = tmp_path / "m.tpsc"
    save_compressed(m, path)
    fresh = _make()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="exclude each other"):
        load_compressed(fresh, path, inference=True, bake=True)
    with pytest.raises(TypeError, match="inference"):
        load_compressed(fresh, path, inference="yes")
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    with pytest.raises(CompressedFileError):
        load_compressed(fresh, bytes(data), inference=True)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert isinstance(fresh[3], nn.Linear)
