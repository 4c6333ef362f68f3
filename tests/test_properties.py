"""Property test (issue 10, "Beyond the defects"): random sequences of compression steps.

Each example builds a small model (Linear, Conv2d, Embedding, or an embedding tied to an
output layer) and applies a random sequence of level_prune / register_weight_sharing /
recluster / optimizer step / bake / state_dict round trip / save_compressed round trip /
deepcopy. After every step: pruned entries stay exactly zero (and stay pruned), a shared
tensor holds at most 2**bits distinct values, tied owners compute the same tensor, every
round trip reproduces the outputs bitwise, and a deepcopy leaves its original unchanged.
"""

from __future__ import annotations

import copy
import io

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchprune_share as tps
from torchprune_share.state import SHARED, TensorState


class Net(nn.Module):
    def __init__(self, kind: str, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.kind = kind
        if kind == "linear":
            self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 3)
        elif kind == "conv":
            self.a, self.b = nn.Conv2d(2, 3, 3), nn.Linear(27, 3)
        elif kind == "embedding":
            self.a, self.b = nn.Embedding(10, 4), nn.Linear(4, 3)
        else:  # tied
            self.a, self.b = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
            self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.kind == "conv":
            h = h.flatten(1)
        return self.b(torch.tanh(h))

    def targets(self) -> list[tuple[nn.Module, str]]:
        return [(self.a, "weight"), (self.b, "weight"), (self.b, "bias")][
            : 2 if self.kind == "tied" else 3
        ]


def inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "conv":
        return torch.randn(2, 2, 5, 5, generator=g)
    if kind in ("embedding", "tied"):
        return torch.arange(6) % 10
    return torch.randn(3, 6, generator=g)


STEP = st.one_of(
    st.tuples(st.just("prune"), st.integers(0, 2), st.sampled_from([0.3, 0.5])),
    st.tuples(st.just("share"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("recluster"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("step"), st.just(0), st.just(0)),
    st.tuples(st.just("bake"), st.just(0), st.just(0)),
    st.tuples(st.just("state_dict"), st.just(0), st.just(0)),
    st.tuples(st.just("tpsc"), st.just(0), st.just(0)),
    st.tuples(st.just("deepcopy"), st.integers(0, 2), st.just(0)),
)


def values(model: Net) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for i, (m, n) in enumerate(model.targets()):
        state = TensorState.of(m, n)
        out[i] = (state.value().clone(), state.keep())
    return out


def check_invariants(model: Net, before: dict, bits: dict[int, int]) -> dict:
    now = values(model)
    for i, (m, n) in enumerate(model.targets()):
        value, keep = now[i]
        state = TensorState.of(m, n)
        if state.compressed:
            assert bool((value[~keep] == 0).all()), f"target {i}: a pruned entry moved"
            _, old_keep = before[i]
            assert bool((keep <= old_keep).all()), f"target {i}: an entry was un-pruned"
        if state.kind == SHARED:
            assert torch.unique(value[keep]).numel() <= 2**state.reparam.bits
            bits[i] = state.reparam.bits
    if model.kind == "tied":
        assert torch.equal(model.a.weight, model.b.weight)
        assert model.b.weight.shape == (10, 4)
    return now


def apply_compression(model: Net, op: str, i: int, arg: object) -> None:
    module, name = model.targets()[i % len(model.targets())]
    shared = TensorState.of(module, name).kind == SHARED
    if op == "prune":
        tps.level_prune(module, name, amount=arg)
    elif op == "share":
        if shared:
            tps.recluster(module, name, bits=arg)
        else:
            tps.register_weight_sharing(module, name, bits=arg)
    elif op == "recluster" and shared:
        tps.recluster(module, name, bits=arg)


def compressed(model: Net) -> bool:
    return bool(tps.compressed_tensors(model))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["linear", "conv", "embedding", "tied"]),
    steps=st.lists(STEP, min_size=1, max_size=8),
)
def test_random_compression_sequences_keep_the_invariants(kind: str, steps: list) -> None:
    model = Net(kind, seed=0)
    x = inputs(kind)
    bits: dict[int, int] = {}
    before = values(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for op, i, arg in steps:
        if op in ("prune", "share", "recluster"):
            apply_compression(model, op, i, arg)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
        elif op == "step":
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        elif op == "bake":
            y = model(x)
            tps.bake(model)
            assert torch.equal(model(x), y)
            before = values(model)  # baked zeros may train again
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
        elif op == "state_dict":
            y = model(x)
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            buf.seek(0)
            fresh = tps.load_state_dict(Net(kind, seed=1), torch.load(buf, weights_only=True))
            assert torch.equal(fresh(x), y)
            model = fresh
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
        elif op == "tpsc":
            y = model(x)
            buf = io.BytesIO()
            if kind == "tied" and compressed(model):
                try:
                    tps.save_compressed(model, buf)
                except ValueError as err:
                    assert "tied" in str(err)
                    continue
                raise AssertionError("a compressed tie was written to a .tpsc file")
            tps.save_compressed(model, buf)
            fresh = tps.load_compressed(Net(kind, seed=1), buf.getvalue())
            assert torch.equal(fresh(x), y)
            model = fresh
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
        else:  # deepcopy, then change the copy
            y, sd = model(x), {k: v.clone() for k, v in model.state_dict().items()}
            replica = copy.deepcopy(model)
            assert torch.equal(replica(x), y)
            apply_compression(replica, "prune", i, 0.5)
            tps.bake(replica)
            assert torch.equal(model(x), y)
            now = model.state_dict()
            assert sorted(now) == sorted(sd)
            assert all(torch.equal(now[k], v) for k, v in sd.items())
        before = check_invariants(model, before, bits)
