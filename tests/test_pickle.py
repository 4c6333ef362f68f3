"""Defect 4 of issue 10: whole-model torch.save / pickle of pruned and shared models."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchprune_share as tps
from torchprune_share.compat import attach_parametrizations, inject_parametrized_class

X = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))


def net(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    if kind in ("pruned", "both"):
        tps.level_prune(model[0], amount=0.6)
        tps.level_prune(model[2], "bias", amount=0.5)
    if kind in ("shared", "both"):
        tps.register_weight_sharing(model[0], bits=3)
        tps.register_weight_sharing(model[2], bits=2, granularity="per_channel")
    return model


def via_torch(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def via_pickle(model: nn.Module) -> nn.Module:
    return pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize("kind", ["pruned", "shared", "both"])
@pytest.mark.parametrize("route", [via_torch, via_pickle])
def test_whole_model_round_trip_is_bitwise_and_trains(kind, route) -> None:
    model = net(kind)
    loaded = route(model)
    assert type(loaded[0]).__name__ == type(model[0]).__name__
    assert parametrize.type_before_parametrizations(loaded[0]) is nn.Linear
    assert torch.equal(loaded(X), model(X))
    assert sorted(loaded.state_dict()) == sorted(model.state_dict())
    zeros = loaded[0].weight == 0
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5)
    before = loaded(X).detach()
    for _ in range(2):
        opt.zero_grad()
        loaded(X).square().sum().backward()
        opt.step()
    assert not torch.equal(loaded(X), before)
    assert torch.equal(loaded[0].weight == 0, zeros)
    # the original is untouched and both can still be baked independently
    assert torch.equal(model(X), before)
    tps.bake(loaded)
    assert type(loaded[0]) is nn.Linear and type(model[0]).__name__ == "ParametrizedLinear"


def test_round_trip_twice_and_then_a_state_dict() -> None:
    model = net("both")
    again = via_pickle(via_torch(model))
    assert torch.equal(again(X), model(X))
    fresh = tps.load_state_dict(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), again.state_dict()
    )
    assert torch.equal(fresh(X), model(X))


def test_tied_model_round_trips_tied() -> None:
    emb, head = nn.Embedding(20, 6), nn.Linear(6, 20, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    tps.register_weight_sharing(tps.level_prune(emb, amount=0.5), bits=2)
    x = torch.arange(7)
    for route in (via_torch, via_pickle):
        loaded = route(model)
        assert loaded[1].parametrizations.weight is loaded[0].parametrizations.weight
        assert torch.equal(loaded(x), model(x))


def test_torch_pruned_model_still_pickles() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    assert torch.equal(via_torch(model)(X), model(X))


# -- the torch internals these rely on (compat.py) ------------------------------------
def test_compat_inject_parametrized_class_gives_torch_class_and_property() -> None:
    lin = nn.Linear(3, 3)
    lin.weight.data.fill_(2.0)
    chain_owner = nn.Linear(3, 3)
    parametrize.register_parametrization(chain_owner, "weight", nn.Identity())
    blank = nn.Linear.__new__(nn.Linear)
    inject_parametrized_class(blank, ["weight"])
    assert type(blank).__name__ == "ParametrizedLinear"
    assert isinstance(type(blank).__dict__["weight"], property)
    assert type(blank).__bases__ == (nn.Linear,)


def test_compat_attach_parametrizations_shares_the_list() -> None:
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    parametrize.register_parametrization(a, "weight", nn.Identity())
    attach_parametrizations(b, "weight", a.parametrizations.weight)
    assert b.parametrizations.weight is a.parametrizations.weight
    assert "weight" not in b._parameters
    assert torch.equal(b.weight, a.weight)
    with pytest.raises(ValueError, match="not the chain's original"):
        attach_parametrizations(nn.Linear(3, 3), "weight", a.parametrizations.weight)
