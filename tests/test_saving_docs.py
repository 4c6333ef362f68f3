"""Defect 9 of issue 10 and docs/saving.md: torch's loader vs torchprune_share's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchprune_share as tps


def net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def compressed() -> nn.Sequential:
    model = net(0)
    tps.register_weight_sharing(tps.level_prune(model[0], amount=0.5), bits=2)
    return model


def test_torch_strict_load_copies_the_biases_before_raising() -> None:
    # What docs/saving.md says of torch's own loader (torch's behaviour, not ours).
    sd, fresh = compressed().state_dict(), net(1)
    bias_before = fresh[2].bias.detach().clone()
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0\.weight"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh[2].bias, sd["2.bias"])
    assert not torch.equal(fresh[2].bias, bias_before)
    result = net(1).load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.weight"]  # the shared layer stays random


def test_library_loader_checks_first_and_loads_bitwise() -> None:
    model = compressed()
    sd = model.state_dict()
    x = torch.randn(3, 8)
    assert torch.equal(tps.load_state_dict(net(1), sd)(x), model(x))
    bad = dict(sd)
    bad["2.weight"] = torch.zeros(3, 8)
    fresh = net(1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(tps.CheckpointError, match=r"'2.weight': shape mismatch"):
        tps.load_state_dict(fresh, bad)
    assert sorted(fresh.state_dict()) == sorted(before)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_saving_md_names_every_route() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "saving.md").read_text()
    for route in (
        "torchprune_share.load_state_dict",
        "safetensors",
        "torch.save(model, path)",
        "save_compressed",
        "torch.export.export",
        "bake",
        "TorchScript is in maintenance mode",
        "strict=True",
    ):
        assert route in text, route
