"""TensorState: the five kinds of tensor, told apart in one place."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import level_prune, register_weight_sharing
from torchprune_share.state import (
    FOREIGN,
    KINDS,
    MASKED,
    PLAIN,
    SHARED,
    TORCH_PRUNED,
    TensorState,
)


class Double(nn.Module):
    def forward(self, x):
        return 2 * x


def five_modules() -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    mods = {k: nn.Linear(6, 4) for k in KINDS}
    prune.l1_unstructured(mods[TORCH_PRUNED], "weight", amount=0.5)
    level_prune(mods[MASKED], amount=0.25)
    register_weight_sharing(level_prune(mods[SHARED], amount=0.5), bits=2)
    parametrize.register_parametrization(mods[FOREIGN], "weight", Double())
    return mods


def test_kind_shape_dtype_value_keep_of_each_kind():
    mods = five_modules()
    zeros = {PLAIN: 0, TORCH_PRUNED: 12, MASKED: 6, SHARED: 12, FOREIGN: 0}
    for kind, lin in mods.items():
        st = TensorState.of(lin, "weight")
        assert st.kind == kind
        assert st.compressed == (kind in (MASKED, SHARED))
        assert tuple(st.shape) == (4, 6) and st.dtype == torch.float32
        assert torch.equal(st.value(), lin.weight.detach()) or kind == TORCH_PRUNED
        assert int((~st.keep()).sum()) == zeros[kind], kind
        assert not st.value().requires_grad
    # torch's pruned attribute is only refreshed by a forward; the state computes it.
    tp = mods[TORCH_PRUNED]
    assert torch.equal(TensorState.of(tp, "weight").value(), tp.weight_orig * tp.weight_mask)
    assert TensorState.of(mods[SHARED], "weight").parameter().shape == (4,)
    assert TensorState.of(mods[TORCH_PRUNED], "weight").parameter() is tp.weight_orig
    assert TensorState.of(mods[PLAIN], "bias").kind == PLAIN


def test_to_plain_keeps_the_value_bitwise_and_refuses_foreign():
    mods = five_modules()
    for kind, lin in mods.items():
        st = TensorState.of(lin, "weight")
        before = st.value().clone()
        if kind == FOREIGN:
            with pytest.raises(ValueError, match="foreign parametrization"):
                st.to_plain()
            assert parametrize.is_parametrized(lin, "weight")
            continue
        st.to_plain()
        after = TensorState.of(lin, "weight")
        assert after.kind == PLAIN and type(lin.weight) is nn.Parameter
        assert torch.equal(lin.weight.detach(), before), kind
        assert sorted(lin.state_dict()) == ["bias", "weight"]


def test_unknown_names_and_wrong_types():
    lin = nn.BatchNorm1d(3)
    assert TensorState.find(lin, "running_var") is None
    with pytest.raises(
        ValueError, match=r"is not a parameter of BatchNorm1d; expected one of \['bias', 'weight'\]"
    ):
        TensorState.of(lin, "running_var")
    with pytest.raises(TypeError, match=r"module must be an nn\.Module"):
        TensorState.of("lin", "weight")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        TensorState.of(lin, 0)  # type: ignore[arg-type]
    assert TensorState.find(nn.Linear(2, 2, bias=False), "bias") is None


def test_shape_of_a_shared_tensor_does_not_compute_it():
    lin = register_weight_sharing(nn.Linear(64, 32), bits=3)
    calls = []
    lin.parametrizations.weight[0].register_forward_hook(lambda *a: calls.append(1))
    st = TensorState.of(lin, "weight")
    assert (tuple(st.shape), st.dtype) == ((32, 64), torch.float32)
    assert calls == []
