"""One error convention across the core's public functions (issue 9 deliverable 8).

A wrong type raises ``TypeError``, a wrong value ``ValueError`` (``CheckpointError``, a
``ValueError``, for a checkpoint that does not fit), the message names the argument, and
the model is left exactly as it was.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchprune_share import (
    AGPSchedule,
    BitLevels,
    CheckpointError,
    ConstantSchedule,
    LevelPruner,
    LevelPruningMethod,
    Quantizer,
    ScanResult,
    SigmaThresholdPruningMethod,
    SparsityLevels,
    bake,
    compression_summary,
    global_level_prune,
    level_prune,
    load_state_dict,
    recluster,
    recommend_bits,
    recommend_sparsities,
    register_weight_sharing,
    scan,
    sigma_prune,
)
from torchprune_share.analysis import make_evaluator, scan_to_csv, scan_to_png
from torchprune_share.config import SharingConfig
from torchprune_share.names import resolve_tensor
from torchprune_share.state import TensorState

from .conftest import assert_same_state, module_state


def net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    register_weight_sharing(m[2], bits=2)
    return m


EV = lambda m: {"accuracy": 1.0}  # noqa: E731
SCAN = ScanResult({"0.weight": {0.5: {"accuracy": 1.0}}}, baseline={"accuracy": 1.0})

# (what, call on the model, expected class, text the message must contain)
CASES = [
    ("level_prune amount missing", lambda m: level_prune(m[0]), TypeError, "amount"),
    ("level_prune amount str", lambda m: level_prune(m[0], amount="0.5"), TypeError, "amount"),
    ("level_prune amount 1.5", lambda m: level_prune(m[0], amount=1.5), ValueError, "amount"),
    ("level_prune amount -1", lambda m: level_prune(m[0], amount=-1), ValueError, "amount"),
    ("level_prune amount > n", lambda m: level_prune(m[0], amount=99), ValueError, "amount"),
    ("level_prune module", lambda m: level_prune("m", amount=0.5), TypeError, "module"),
    ("level_prune name type", lambda m: level_prune(m[0], 3, amount=0.5), TypeError, "name"),
    ("level_prune name", lambda m: level_prune(m[0], "nope", amount=0.5), ValueError, "name"),
    (
        "level_prune scores type",
        lambda m: level_prune(m[0], amount=0.5, importance_scores=[1.0]),
        TypeError,
        "importance_scores",
    ),
    (
        "level_prune scores shape",
        lambda m: level_prune(m[0], amount=0.5, importance_scores=torch.ones(2)),
        ValueError,
        "importance_scores",
    ),
    (
        "global amount type",
        lambda m: global_level_prune([(m[0], "weight")], amount=None),
        TypeError,
        "amount",
    ),
    ("global empty", lambda m: global_level_prune([], amount=0.5), ValueError, "parameters"),
    ("global pair", lambda m: global_level_prune([m[0]], amount=0.5), TypeError, "parameters"),
    (
        "global scores",
        lambda m: global_level_prune([(m[0], "weight")], 0.5, importance_scores=[1]),
        TypeError,
        "importance_scores",
    ),
    ("sigma q type", lambda m: sigma_prune(m[0], q="1"), TypeError, "q must be"),
    ("sigma q value", lambda m: sigma_prune(m[0], q=-1.0), ValueError, "q must be"),
    ("method amount", lambda m: LevelPruningMethod(amount="x"), TypeError, "amount"),
    ("sigma method", lambda m: SigmaThresholdPruningMethod(q=float("inf")), ValueError, "q"),
    ("share bits type", lambda m: register_weight_sharing(m[0], bits="4"), TypeError, "bits"),
    ("share bits value", lambda m: register_weight_sharing(m[0], bits=0), ValueError, "bits"),
    ("share init type", lambda m: register_weight_sharing(m[0], init=1), TypeError, "init"),
    ("share init", lambda m: register_weight_sharing(m[0], init="x"), ValueError, "init"),
    (
        "share axis type",
        lambda m: register_weight_sharing(m[0], channel_axis="0"),
        TypeError,
        "channel_axis",
    ),
    (
        "share axis value",
        lambda m: register_weight_sharing(m[0], granularity="per_channel", channel_axis=5),
        ValueError,
        "channel_axis",
    ),
    ("share config", lambda m: register_weight_sharing(m[0], config=4), TypeError, "config"),
    (
        "share cache_index",
        lambda m: register_weight_sharing(m[0], cache_index="yes"),
        TypeError,
        "cache_index",
    ),
    (
        "share generator",
        lambda m: register_weight_sharing(m[0], generator=0),
        TypeError,
        "generator",
    ),
    ("share twice", lambda m: register_weight_sharing(m[2]), ValueError, "already shared"),
    ("recluster bits type", lambda m: recluster(m[2], bits=2.0), TypeError, "bits"),
    ("recluster bits value", lambda m: recluster(m[2], bits=17), ValueError, "bits"),
    ("recluster plain", lambda m: recluster(m[0]), ValueError, "not shared"),
    ("recluster keyword", lambda m: recluster(m[2], colour=1), TypeError, "colour"),
    ("config damping", lambda m: SharingConfig(damping="x"), TypeError, "damping"),
    ("pruner options", lambda m: LevelPruner("0.weight"), TypeError, "options"),
    ("pruner sparsity type", lambda m: LevelPruner({"*": "0.5"}), TypeError, "sparsity"),
    ("pruner sparsity value", lambda m: LevelPruner({"*": 1.5}), ValueError, "sparsity"),
    ("pruner name type", lambda m: LevelPruner({3: 0.5}), TypeError, "name"),
    ("pruner unknown", lambda m: LevelPruner({"9.weight": 0.5}).prune(m), ValueError, "9.weight"),
    ("pruner step type", lambda m: LevelPruner({"*": 0.5}).prune(m, step="1"), TypeError, "step"),
    ("pruner step value", lambda m: LevelPruner({"*": 0.5}).prune(m, step=-1), ValueError, "step"),
    ("quantizer bits type", lambda m: Quantizer({"*": "4"}), TypeError, "bits"),
    ("quantizer bits value", lambda m: Quantizer({"*": 0}), ValueError, "bits"),
    ("quantizer init", lambda m: Quantizer({"*": 4}, init="x"), ValueError, "init"),
    ("quantizer unknown", lambda m: Quantizer({"9.weight": 4}).quantize(m), ValueError, "9.weight"),
    ("schedule", lambda m: ConstantSchedule("0.5"), TypeError, "sparsity"),
    ("agp", lambda m: AGPSchedule(0.0, 1.5, 0, 10), ValueError, "final"),
    ("recommend drop type", lambda m: recommend_sparsities(SCAN, "1"), TypeError, "max_drop"),
    ("recommend drop value", lambda m: recommend_bits(SCAN, -1.0), ValueError, "max_drop"),
    ("scan kind", lambda m: scan(m, [0.5], EV, kind="sparsity"), TypeError, "kind"),
    ("scan evaluate", lambda m: scan(m, [0.5], 3, kind=SparsityLevels()), TypeError, "evaluate"),
    (
        "scan names str",
        lambda m: scan(m, [0.5], EV, kind=SparsityLevels(), param_names="0.weight"),
        TypeError,
        "param_names",
    ),
    ("scan level type", lambda m: scan(m, ["a"], EV, kind=SparsityLevels()), TypeError, "levels"),
    ("scan level value", lambda m: scan(m, [1.5], EV, kind=SparsityLevels()), ValueError, "[0, 1]"),
    ("scan no level", lambda m: scan(m, [], EV, kind=SparsityLevels()), ValueError, "level"),
    ("scan bits type", lambda m: scan(m, [2.5], EV, kind=BitLevels()), TypeError, "bits"),
    ("scan bits value", lambda m: scan(m, [0], EV, kind=BitLevels()), ValueError, "bits"),
    (
        "scan unknown",
        lambda m: scan(m, [0.5], EV, kind=SparsityLevels(), param_names=["9.weight"]),
        ValueError,
        "9.weight",
    ),
    (
        "scan stop type",
        lambda m: scan(m, [0.5], EV, kind=SparsityLevels(), stop_below="x"),
        TypeError,
        "stop_below",
    ),
    ("bit levels seed", lambda m: BitLevels(seed="0"), TypeError, "seed"),
    ("evaluator", lambda m: make_evaluator(None, 3), TypeError, "validate_func"),
    ("evaluator batches type", lambda m: make_evaluator([], EV, max_batches="1"), TypeError, "max"),
    ("evaluator batches", lambda m: make_evaluator([], EV, max_batches=0), ValueError, "max"),
    ("csv of a list", lambda m: scan_to_csv([1], "x.csv"), TypeError, "ScanResult"),
    ("png metric", lambda m: scan_to_png(SCAN, "x.png", metric="nope"), ValueError, "metric"),
    ("summary index type", lambda m: compression_summary(m, index_bits="3"), TypeError, "index"),
    ("summary index value", lambda m: compression_summary(m, index_bits=0), ValueError, "index"),
    ("summary model", lambda m: compression_summary("m"), TypeError, "model"),
    ("summary names str", lambda m: compression_summary(m, "0.weight"), TypeError, "param_names"),
    ("resolve type", lambda m: resolve_tensor(m, 0), TypeError, "str"),
    ("resolve value", lambda m: resolve_tensor(m, "0.nope"), ValueError, "nope"),
    ("state module", lambda m: TensorState.of(None, "weight"), TypeError, "module"),
    ("bake", lambda m: bake("m"), TypeError, "model"),
    ("load model", lambda m: load_state_dict("m", {}), TypeError, "model"),
    ("load mapping", lambda m: load_state_dict(m, [("a", 1)]), TypeError, "state_dict"),
    ("load keys", lambda m: load_state_dict(m, {"x": torch.zeros(1)}), CheckpointError, "keys"),
]


@pytest.mark.parametrize(("what", "call", "exc", "text"), CASES, ids=[c[0] for c in CASES])
def test_error_class_and_model_untouched(what, call, exc, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = net()
    before = module_state(m)
    with pytest.raises(exc) as info:
        call(m)
    assert type(info.value) is exc, f"{what}: {type(info.value).__name__}: {info.value}"
    assert text in str(info.value), f"{what}: {info.value}"
    assert_same_state(m, before)
    assert not list(tmp_path.iterdir()), f"{what} wrote a file"


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
