"""Defect 1 of issue 10: a tied tensor is compressed once and stays tied."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import torchprune_share as tps
from torchprune_share.state import SHARED, TensorState


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(x))))


def lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


X = torch.arange(12) % 50


def assert_tied(model: TinyLM) -> None:
    assert model.head.parametrizations.weight is model.emb.parametrizations.weight
    assert torch.equal(model.head.weight, model.emb.weight)
    assert model.head.weight.shape == (50, 16)


@pytest.mark.parametrize("owner", ["emb", "head"])
def test_register_weight_sharing_keeps_the_tie(owner: str) -> None:
    model = lm()
    tps.register_weight_sharing(getattr(model, owner), bits=3)
    assert_tied(model)
    assert len(torch.unique(model.head.weight.detach())) <= 8
    assert model(X).shape == (12, 50)
    # one trainable codebook for both owners
    names = [n for n, _ in model.named_parameters()]
    assert names.count("emb.parametrizations.weight.original") == 1
    assert not any(n.startswith("head.parametrizations") for n in names)


def test_quantizer_keeps_the_tie() -> None:
    model = lm()
    tps.Quantizer({"*": 3}).quantize(model)
    assert_tied(model)
    assert TensorState.of(model.head, "weight").kind == SHARED
    assert model.emb.parametrizations.weight.original.numel() == 8


@pytest.mark.parametrize("owner", ["emb", "head"])
def test_level_prune_prunes_every_owner(owner: str) -> None:
    model = lm()
    tps.level_prune(getattr(model, owner), amount=0.5)
    assert int((model.emb.weight == 0).sum()) == 400
    assert int((model.head.weight == 0).sum()) == 400
    assert model.head.parametrizations.weight is model.emb.parametrizations.weight


def test_prune_then_share_then_train_updates_once() -> None:
    model = lm()
    tps.level_prune(model.head, amount=0.75)
    tps.register_weight_sharing(model.emb, bits=2)
    assert_tied(model)
    zeros = model.emb.weight == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.emb.parametrizations.weight.original.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(X).logsumexp(-1).sum().backward()
        opt.step()
    after = model.emb.parametrizations.weight.original.detach()
    assert not torch.equal(before, after)
    assert_tied(model)
    assert torch.equal(model.emb.weight == 0, zeros)
    assert len(torch.unique(model.emb.weight.detach())) <= 5


def test_state_dict_round_trip_keeps_the_tie() -> None:
    model = lm()
    tps.register_weight_sharing(tps.level_prune(model.emb, amount=0.5), bits=3)
    sd = model.state_dict()
    fresh = tps.load_state_dict(lm(1), sd)
    assert_tied(fresh)
    assert torch.equal(fresh(X), model(X))
    # through bytes, as torch.save writes it
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    again = tps.load_state_dict(lm(2), torch.load(buf, weights_only=True))
    assert_tied(again)
    assert torch.equal(again(X), model(X))


def test_checkpoint_that_unties_is_refused_unchanged() -> None:
    model = lm()
    tps.register_weight_sharing(model.emb, bits=3)
    sd = model.state_dict()
    sd["head.parametrizations.weight.original"] = sd[
        "head.parametrizations.weight.original"
    ].clone()
    sd["head.parametrizations.weight.original"][0] += 1.0
    fresh = lm(1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(tps.CheckpointError, match=r"'emb.weight' is tied to 'head.weight'"):
        tps.load_state_dict(fresh, sd)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert fresh.head.weight is fresh.emb.weight


def test_bake_keeps_the_tie() -> None:
    model = lm()
    tps.register_weight_sharing(tps.level_prune(model.emb, amount=0.5), bits=3)
    y = model(X)
    tps.bake(model)
    assert model.head.weight is model.emb.weight
    assert type(model.head) is nn.Linear and type(model.emb) is nn.Embedding
    assert torch.equal(model(X), y)


def test_recluster_keeps_the_tie() -> None:
    model = lm()
    tps.register_weight_sharing(model.emb, bits=4)
    tps.recluster(model.head, bits=2)
    assert_tied(model)
    assert model.emb.parametrizations.weight.original.numel() == 4


def test_deepcopy_keeps_the_tie_and_leaves_the_original() -> None:
    model = lm()
    tps.register_weight_sharing(model.emb, bits=3)
    y = model(X)
    replica = copy.deepcopy(model)
    assert_tied(replica)
    tps.bake(replica)
    assert_tied(model)
    assert torch.equal(model(X), y) and torch.equal(replica(X), y)


def test_save_compressed_of_a_tie_is_refused_before_writing(tmp_path) -> None:
    # The .tpsc format has no record for a tie yet (see docs/saving.md): refuse, clearly,
    # rather than write a file that cannot be loaded back.
    model = lm()
    tps.register_weight_sharing(tps.level_prune(model.emb, amount=0.5), bits=3)
    with pytest.raises(ValueError, match=r"'emb.weight' is tied .*state_dict\(\)"):
        tps.save_compressed(model, tmp_path / "m.tpsc")
    assert not (tmp_path / "m.tpsc").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compressed", [False, True])
def test_scan_changes_every_owner_and_restores_the_tie(compressed: bool) -> None:
    from torchprune_share import SparsityLevels, scan

    model = lm()
    if compressed:
        tps.register_weight_sharing(model.emb, bits=3)
    seen = []

    def evaluate(m: TinyLM) -> dict[str, float]:
        # during the scan both owners must compute the same (changed) tensor
        seen.append((torch.equal(m.emb.weight, m.head.weight), float((m.head.weight == 0).sum())))
        return {"loss": float(m(X).square().mean())}

    y = model(X)
    result = scan(model, [0.0, 0.5], evaluate, kind=SparsityLevels(), progress=False)
    assert sorted(result) == ["emb.weight", "mid.weight"]
    assert all(same for same, _ in seen)
    assert max(zeros for _, zeros in seen) == 400  # head pruned with emb at 0.5
    assert torch.equal(model(X), y)
    if compressed:
        assert_tied(model)
    else:
        assert model.head.weight is model.emb.weight


def test_names_list_a_tie_once() -> None:
    from torchprune_share.names import default_parameter_names

    model = lm()
    tps.register_weight_sharing(model.emb, bits=3)
    assert default_parameter_names(model) == ["emb.weight", "mid.weight"]


def test_tie_to_torch_pruned_partner_is_refused_unchanged() -> None:
    model = lm()
    torch.nn.utils.prune.l1_unstructured(model.head, "weight", amount=0.5)
    before = model.emb.weight.detach().clone()
    with pytest.raises(ValueError, match=r"Embedding.weight, Linear.weight"):
        tps.register_weight_sharing(model.emb, bits=3)
    with pytest.raises(ValueError, match=r"tied"):
        tps.level_prune(model.emb, amount=0.5)
    assert type(model.emb) is nn.Embedding
    assert torch.equal(model.emb.weight, before)


def test_global_level_prune_refuses_a_tie_named_twice() -> None:
    model = lm()
    with pytest.raises(ValueError, match="one tied tensor"):
        tps.global_level_prune([(model.emb, "weight"), (model.head, "weight")], amount=0.5)
    assert type(model.emb) is nn.Embedding


def test_tied_within_one_module() -> None:
    lin = nn.Linear(4, 4)
    lin.register_parameter("alias", lin.weight)
    tps.level_prune(lin, amount=0.5)
    assert int((lin.alias == 0).sum()) == 8
    assert lin.parametrizations.alias is lin.parametrizations.weight


# -- the Python/torch internals ties rely on (compat.py) ------------------------------
def test_compat_is_sole_reference_is_conservative() -> None:
    from torchprune_share.compat import is_sole_reference

    lin = nn.Linear(2, 2)
    assert is_sole_reference(lin, "weight")
    other = nn.Linear(2, 2)
    other.weight = lin.weight
    assert not is_sole_reference(lin, "weight")
    del other
    assert is_sole_reference(lin, "weight")
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)  # a reference: ask the slow way
    assert not is_sole_reference(lin, "weight")
    del opt


def test_compat_parameter_owners_finds_every_module() -> None:
    from torchprune_share.compat import parameter_owners

    emb, head, third = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False), nn.Linear(3, 5)
    head.weight = emb.weight
    third.register_parameter("w", emb.weight)
    kept = {"not a module": emb.weight}  # a plain dict holding it is no owner
    owners = parameter_owners(emb.weight)
    assert sorted((type(m).__name__, n) for m, n in owners) == [
        ("Embedding", "weight"),
        ("Linear", "w"),
        ("Linear", "weight"),
    ]
    assert kept
