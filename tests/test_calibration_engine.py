"""Lockstep forwards and block replays give the same compression as whole forwards, faster."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchprune_share import LevelPruner, Quantizer, level_prune
from torchprune_share.calibration import engine
from torchprune_share.calibration.matrix import dense_target
from torchprune_share.calibration.replay import Clock, plan_anchors, record_inputs


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x, mask=None, scale: float = 1.0, extra=None):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * scale + mask, -1)
        x = x + self.o(a @ self.v(x))
        if extra is not None:
            x = x + extra.bias
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self, d: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.emb = nn.Linear(8, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.head = nn.Linear(d, 4)
        self.extra = None

    def forward(self, x, mask):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h, mask=mask, scale=0.25, extra=self.extra)
        return self.head(h)


BLOCK_WEIGHTS = [
    f"blocks.{i}.{n}.weight" for i in range(4) for n in ("q", "k", "v", "o", "up", "down")
]


def _data(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [
        {"x": torch.randn(4, 6, 8, generator=g), "mask": torch.zeros(4, 1, 6)} for _ in range(n)
    ]


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _counting(calls: list):
    def forward(model, batch):
        calls.append(1)
        return model(**batch)

    return forward


def _mode(monkeypatch, mode: str) -> None:
    """Select how sequential calibration runs the groups: every batch's forward once in
    lockstep (the default up to LOCKSTEP_MAX_BATCHES), replaying blocks, or whole forwards."""
    monkeypatch.setattr(engine, "LOCKSTEP_MAX_BATCHES", 128 if mode == "lockstep" else 0)
    if mode == "plain":
        monkeypatch.setattr(
            engine, "plan_anchors", lambda model, groups, clock: [None] * len(groups)
        )


def _compress(how: str, model: nn.Module, data, forward, **kw) -> None:
    if how == "share":
        Quantizer(dict.fromkeys(BLOCK_WEIGHTS, 3), granularity="per_channel").quantize(
            model, data, forward=forward, progress=False, **kw
        )
    else:
        LevelPruner(dict.fromkeys(BLOCK_WEIGHTS, 0.5)).prune(
            model, calibration=data, forward=forward, progress=False, **kw
        )


@pytest.mark.parametrize("how", ["share", "prune"])
def test_lockstep_and_replay_give_the_same_result_with_fewer_forwards(how, monkeypatch):
    data = _data()
    results, forwards = {}, {}
    for mode in ("lockstep", "replay", "plain"):
        _mode(monkeypatch, mode)
        model = _net()
        calls: list = []
        _compress(how, model, data, _counting(calls), asymmetric=False)
        with torch.no_grad():
            results[mode] = torch.cat([model(**b).flatten() for b in data])
        forwards[mode] = len(calls)
    assert torch.equal(results["lockstep"], results["plain"])
    assert torch.equal(results["replay"], results["plain"])
    # 4 blocks x 4 groups, after one discovery forward: lockstep runs each batch once;
    # replay records each block's inputs once; plain runs a forward per group and batch.
    assert forwards == {
        "lockstep": 1 + len(data),
        "replay": 1 + 4 * len(data),
        "plain": 1 + 16 * len(data),
    }


@pytest.mark.parametrize("how", ["share", "prune"])
def test_asymmetric_lockstep_equals_the_per_group_forwards_beside_the_original(how, monkeypatch):
    # Lockstep runs every batch through the model and a dense copy, paused together; the
    # per-group path (layers called more than once) runs a forward per group and batch
    # twice, the second with the original values shown: the same statistics.
    data = _data()
    results, forwards = {}, {}
    real_discover = engine._discover
    for mode in ("lockstep", "per-group"):
        if mode == "per-group":
            monkeypatch.setattr(
                engine, "_discover", lambda *a: (lambda g, r, c: (g, True, c))(*real_discover(*a))
            )
        model = _net()
        calls: list = []
        _compress(how, model, data, _counting(calls))
        with torch.no_grad():
            results[mode] = torch.cat([model(**b).flatten() for b in data])
        forwards[mode] = len(calls)
    assert torch.equal(results["lockstep"], results["per-group"])
    # 16 groups: the first group sees no staged layer yet, so runs no dense forward.
    assert forwards == {"lockstep": 1 + 2 * len(data), "per-group": 1 + 31 * len(data)}


def test_asymmetric_fits_the_dense_outputs_better_and_falls_back_beyond_the_lockstep(
    monkeypatch, caplog
):
    # Fitting each layer to the dense model's outputs corrects the earlier layers' errors:
    # the compressed model's outputs end closer to the dense ones.
    g = torch.Generator().manual_seed(5)
    data = [
        {"x": torch.randn(8, 6, 8, generator=g), "mask": torch.zeros(8, 1, 6)} for _ in range(6)
    ]
    dense = _net()
    with torch.no_grad():
        ref = torch.cat([dense(**b).flatten() for b in data])
    err = {}
    for asym in (False, True):
        model = _net()
        _compress("prune", model, data, None, asymmetric=asym)
        with torch.no_grad():
            err[asym] = float((torch.cat([model(**b).flatten() for b in data]) - ref).norm())
    assert err[True] < err[False]
    monkeypatch.setattr(engine, "LOCKSTEP_MAX_BATCHES", 2)
    model = _net()
    with caplog.at_level("INFO", logger=engine.__name__):
        _compress("prune", model, data, None, asymmetric=True)
    assert "each layer is fitted to its own outputs" in caplog.text
    plain = _net()
    _compress("prune", plain, data, None, asymmetric=False)
    for p, r in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(p, r)


def test_plan_uses_the_blocks_and_skips_what_it_cannot_replay():
    model = _net()
    data = _data(1)
    with torch.no_grad(), Clock() as clock:
        model(**data[0])
    groups = [[model.emb]]
    for b in model.blocks:
        groups += [[b.q, b.k, b.v], [b.o], [b.up], [b.down]]
    groups.append([model.head])
    plan = plan_anchors(model, groups, clock)
    assert plan[0] is None and plan[-1] is None
    assert all(plan[1 + 4 * i + j] is model.blocks[i] for i in range(4) for j in range(4))
    # A block with a hook of its own is not replayed (the hook would be skipped or doubled).
    h = model.blocks[1].register_forward_pre_hook(lambda m, a: None)
    try:
        plan = plan_anchors(model, groups, clock)
    finally:
        h.remove()
    assert all(plan[5 + j] is not model.blocks[1] for j in range(4))


def test_inputs_that_are_not_tensors_or_plain_values_are_not_recorded(monkeypatch):
    _mode(monkeypatch, "replay")
    model = _net()
    run = lambda b: model(**b)  # noqa: E731
    assert record_inputs(_data(2), run, model.blocks[0]) is not None

    class Opaque:
        bias = torch.zeros(16)

    model.extra = Opaque()
    assert record_inputs(_data(2), run, model.blocks[0]) is None
    # ... and calibration then runs whole forwards, with the same result as without replay.
    data = _data()
    ref = copy.deepcopy(model)
    Quantizer(dict.fromkeys(BLOCK_WEIGHTS, 3)).quantize(model, data, progress=False)
    calls: list = []
    Quantizer(dict.fromkeys(BLOCK_WEIGHTS, 3)).quantize(
        ref, data, forward=_counting(calls), progress=False
    )
    # One failed recording per block (its first batch), then whole forwards per group.
    assert len(calls) == 1 + 4 + 16 * len(data)
    for p, r in zip(model.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(p, r)


class TokenNet(nn.Module):
    """Per-token layers over an embedding: padded positions change nothing real."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, input_ids, attention_mask):
        return self.fc2(torch.relu(self.fc1(self.emb(input_ids)))) * attention_mask[..., None]


@pytest.mark.parametrize("mode", ["lockstep", "replay"])
def test_padded_positions_are_left_out_of_the_statistics(mode, monkeypatch):
    _mode(monkeypatch, mode)
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 7, 3]
    sentences = [torch.randint(1, 50, (n,), generator=g) for n in lengths]
    padded = {
        "input_ids": torch.stack([torch.cat([s, s.new_zeros(7 - len(s))]) for s in sentences]),
        "attention_mask": torch.stack([torch.arange(7) < len(s) for s in sentences]).long(),
    }
    single = [
        {"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)}
        for s in sentences
    ]
    opts = {"emb.weight": 2, "fc1.weight": 2, "fc2.weight": 2}
    results = []
    for data in ([padded], single):
        torch.manual_seed(0)
        model = TokenNet()
        Quantizer(opts, granularity="per_channel").quantize(model, data, progress=False)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in results[0]:
        assert torch.allclose(results[0][key].float(), results[1][key].float(), atol=1e-5), key


class Branchy(nn.Module):
    """Batches whose first entry is negative skip ``mid``: not every forward reaches
    every group."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        if float(x[0, 0]) >= 0:
            h = torch.relu(self.mid(h))
        return self.out(h)


def _branchy_data():
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(32, 8, generator=g) for _ in range(4)]
    data[0][0, 0], data[1][0, 0], data[2][0, 0], data[3][0, 0] = 1.0, -1.0, 1.0, -1.0
    return data


def test_lockstep_with_forwards_that_skip_a_group(monkeypatch):
    data = _branchy_data()
    results = {}
    for mode in ("lockstep", "plain"):
        _mode(monkeypatch, mode)
        torch.manual_seed(0)
        model = Branchy()
        Quantizer({"*": 3}, granularity="per_channel").quantize(
            model, data, progress=False, asymmetric=False
        )
        results[mode] = [v.clone() for v in model.state_dict().values()]
    for a, b in zip(results["lockstep"], results["plain"], strict=True):
        assert torch.equal(a, b)


def test_lockstep_failure_stops_every_forward_and_leaves_the_model(unchanged):
    import threading

    torch.manual_seed(0)
    model = Branchy()
    data = _branchy_data()
    before = threading.active_count()

    class Interrupted(BaseException):
        pass

    def forward(m, batch):
        if float(batch[0, 0]) < 0:
            raise Interrupted  # as a KeyboardInterrupt would, from one batch of four
        return m(batch)

    with unchanged(model), pytest.raises(Interrupted):
        Quantizer({"*": 3}).quantize(model, data, forward=forward, progress=False)
    assert threading.active_count() == before
    assert all(not m._forward_pre_hooks for m in model.modules())


class WideBlock(Block):
    """A block whose FFN output layer reads 4x its width: its cross term is cheaper times
    its weight (2 R < C)."""

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


def test_only_a_narrow_layer_with_its_own_statistics_gathers_its_cross_term_times_its_weight(
    monkeypatch,
):
    torch.manual_seed(0)
    model = Net()
    model.blocks = nn.ModuleList(WideBlock(16) for _ in range(2))
    names = [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("q", "k", "v", "o", "up", "down")]
    data = _data()

    def run() -> dict[str, engine.Statistics]:
        got: dict[str, engine.Statistics] = {}
        mods = dict(model.named_modules())
        targets = [engine.Target(n, mods[n.rsplit(".", 1)[0]], "weight") for n in names]

        def compress(t, stats):
            got[t.qualified] = stats
            w = getattr(t.module, t.name).detach()
            return w + 0.05 * torch.sign(w)  # a change, so that later inputs differ

        engine.calibrate(model, targets, data, compress, progress=False)
        return got

    premultiplied = run()
    for name, stats in premultiplied.items():
        layer = dict(model.named_modules())[name.rsplit(".", 1)[0]]
        if name.endswith("down.weight"):
            assert torch.equal(stats.cross_weight, layer.weight.detach())
            assert stats.cross is None or stats.cross.shape == (16, 64)
        else:  # q, k, v share their statistics; o and up are not narrow
            assert stats.cross_weight is None
    assert premultiplied["blocks.1.down.weight"].cross is not None
    monkeypatch.setattr(engine._Recorder, "_weight", lambda self, t: None)
    full = run()
    for name in ("blocks.0.down.weight", "blocks.1.down.weight"):
        w = dict(model.named_modules())[name.rsplit(".", 1)[0]].weight.detach()
        want = dense_target(w, full[name].centered(), 0.1)
        got = dense_target(w, premultiplied[name].centered(), 0.1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_pruned_model_still_shares_one_h_per_input_and_premultiplies_its_cross_term():
    # parametrize swaps each pruned layer's class for a ParametrizedLinear: a calibrated
    # sharing after a calibrated pruning must still gather q/k/v's H once and the narrow
    # layer's cross term times its (masked) weight, as on the dense model.
    torch.manual_seed(0)
    model = Net()
    model.blocks = nn.ModuleList(WideBlock(16) for _ in range(2))
    names = [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("q", "k", "v", "o", "up", "down")]
    mods = dict(model.named_modules())
    for n in names:
        level_prune(mods[n.rsplit(".", 1)[0]], "weight", 0.5)
    got: dict[str, engine.Statistics] = {}
    targets = [engine.Target(n, mods[n.rsplit(".", 1)[0]], "weight") for n in names]

    def compress(t, stats):
        got[t.qualified] = stats
        w = getattr(t.module, t.name).detach()
        return w + 0.05 * torch.sign(w)

    engine.calibrate(model, targets, _data(), compress, progress=False)
    for i in range(2):
        q, k, v = (got[f"blocks.{i}.{n}.weight"] for n in "qkv")
        assert q is k is v
        down = mods[f"blocks.{i}.down"]
        assert torch.equal(got[f"blocks.{i}.down.weight"].cross_weight, down.weight.detach())
        assert int((down.weight == 0).sum()) == down.weight.numel() // 2
