"""Every torch internal this package relies on (torchprune_share.compat), checked here.

A failure here means the installed torch changed a private detail; fix compat.py, not the
callers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import compat


def test_prune_hooks_live_in_forward_pre_hooks_with_a_tensor_name():
    lin = nn.Linear(4, 4)
    prune.l1_unstructured(lin, "weight", amount=0.5)
    prune.random_unstructured(lin, "weight", amount=0.5)  # a PruningContainer
    prune.l1_unstructured(lin, "bias", amount=1)
    hooks = list(lin._forward_pre_hooks.values())
    assert all(isinstance(h, prune.BasePruningMethod) for h in hooks)
    assert sorted(h._tensor_name for h in hooks) == ["bias", "weight"]
    assert isinstance(compat.prune_hook(lin, "weight"), prune.PruningContainer)
    assert sorted(compat.prune_hooks(lin)) == ["bias", "weight"]
    prune.remove(lin, "weight")
    assert list(compat.prune_hooks(lin)) == ["bias"]


def test_parametrize_injects_a_default_deepcopy_we_can_recognise():
    lin = nn.Linear(2, 2)
    assert not compat.is_torch_default_deepcopy(type(lin))
    parametrize.register_parametrization(lin, "weight", nn.Identity())
    cls = type(lin)
    assert cls is not nn.Linear and "__deepcopy__" in cls.__dict__
    assert cls.__dict__["__deepcopy__"].__qualname__.endswith("default_deepcopy")
    assert compat.is_torch_default_deepcopy(cls)
    # torch's default gives the copy the same class: what parametrizations.register fixes.
    assert type(copy.deepcopy(lin)) is cls


def test_slot_names():
    class Slotted:
        __slots__ = ("a", "b")

    assert compat.slot_names(Slotted) == ["a", "b"]
    assert compat.slot_names(nn.Linear) == []


def test_is_tracing_sees_fake_tensors_compile_and_functorch():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert not compat.is_tracing(torch.zeros(2))
    with FakeTensorMode():
        fake = torch.zeros(3)
    assert compat.is_tracing(fake)
    seen = []
    torch.func.vmap(lambda x: seen.append(compat.is_tracing(x)) or x)(torch.zeros(2, 3))
    assert seen == [True]
    seen.clear()

    def f(x):
        seen.append(compat.is_tracing())
        return x + 1

    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))
    assert seen == [True]


def test_version_counter_and_load_from_state_dict_signature():
    import inspect

    t = torch.zeros(3)
    v = compat.tensor_version(t)
    t.copy_(torch.ones(3))
    assert compat.tensor_version(t) == v + 1
    params = list(inspect.signature(nn.Module._load_from_state_dict).parameters)
    assert tuple(params[1:]) == compat.LOAD_FROM_STATE_DICT_ARGS


def test_no_underscore_name_is_imported_across_the_core_modules():
    import ast
    import pathlib

    import torchprune_share

    core = (
        "analysis bits_analysis checkpoint codebook compat config evaluation levels names "
        "options parametrizations policies prune_methods pruning quantizer recommend results schedules "
        "sensitivity sharing state summary"
    ).split()
    root = pathlib.Path(torchprune_share.__file__).parent
    bad = []
    for mod in core:
        tree = ast.parse((root / f"{mod}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                bad += [f"{mod}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad
