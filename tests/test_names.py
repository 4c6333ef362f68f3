"""Tensor names: one module for qualified names, key patterns and resolution."""

from __future__ import annotations

import pytest
from torch import nn
from torch.nn.utils import prune

from torchprune_share import level_prune, register_weight_sharing
from torchprune_share.names import (
    HOOK_KEY,
    ORIGINAL_KEY,
    REPARAM_KEY,
    default_parameter_names,
    dense_name,
    expand_default_names,
    join,
    named_tensors,
    reparam_base,
    resolve_tensor,
    split,
)


def test_join_split_and_keys_round_trip():
    for q in ("weight", "fc1.weight", "features.0.conv.weight"):
        assert join(*split(q)) == q
        base = reparam_base(q)
        assert dense_name(base + ".original") == q
        assert dense_name(base + ".0._extra_state") == q
        assert dense_name(q + "_orig") == dense_name(q + "_mask") == q
    m = REPARAM_KEY.match("a.b.parametrizations.weight.0.index")
    assert (m["prefix"], m["name"], m["rest"]) == ("a.b.", "weight", "0.index")
    assert ORIGINAL_KEY.match("parametrizations.weight.original1")["name"] == "weight"
    assert ORIGINAL_KEY.match("parametrizations.weight.0.index") is None
    assert HOOK_KEY.match("fc.bias_mask")["kind"] == "mask"
    assert dense_name("fc.bias") == "fc.bias"


def model() -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3), nn.LayerNorm(3))
    level_prune(net[0], amount=0.5)
    prune.l1_unstructured(net[1], "bias", amount=1)
    register_weight_sharing(net[1], bits=2)
    return net


def test_named_tensors_keep_user_facing_names_and_order():
    net = model()
    assert [q for q, _, _ in named_tensors(net)] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
    ]
    assert default_parameter_names(net) == ["0.weight", "1.weight"]
    assert expand_default_names(net, ["2.bias", "*"]) == ["2.bias", "0.weight", "1.weight"]
    assert expand_default_names(net, ["0.weight", "*"]) == ["0.weight", "1.weight"]


def test_resolve_accepts_internal_names_and_explains_unknown_ones():
    net = model()
    assert resolve_tensor(net, "1.parametrizations.weight.original") == (net[1], "weight")
    assert resolve_tensor(net, "1.bias_orig") == (net[1], "bias")
    with pytest.raises(ValueError, match=r"'3.weight': the model has no module '3'"):
        resolve_tensor(net, "3.weight")
    with pytest.raises(ValueError, match=r"Linear has no parameter 'gain'; expected one of"):
        resolve_tensor(net, "0.gain")
    with pytest.raises(TypeError, match="a tensor name must be a str"):
        resolve_tensor(net, 3)  # type: ignore[arg-type]


def test_owned_keys_map_every_compressed_key_to_its_dense_name():
    from torchprune_share import fileformat
    from torchprune_share.checkpoint import owned_keys

    net = model()
    owned = owned_keys(net)
    assert owned == {
        "0.parametrizations.weight.original": "0.weight",
        "0.parametrizations.weight.0.mask": "0.weight",
        "1.parametrizations.weight.original": "1.weight",
        "1.parametrizations.weight.0.index": "1.weight",
        "1.parametrizations.weight.0._extra_state": "1.weight",
        "1.bias_orig": "1.bias",
        "1.bias_mask": "1.bias",
    }
    assert all(dense_name(k) == q for k, q in owned.items())
    if hasattr(fileformat, "_owners"):  # the file format's own copy, until it uses this one
        assert fileformat._owners(net) == owned
