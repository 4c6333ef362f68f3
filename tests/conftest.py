"""Shared fixtures: one torch thread, a fixed seed, and a snapshot of a module's complete state."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings
from torch import nn
from torch.nn.utils import parametrize

# Under CI the property tests draw the same examples every run (a failure reproduces);
# locally they explore new ones each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The models under test are small: two-thread OpenMP regions only add overhead, and on
    # a busy 2-core machine they stall (a digits validation pass: 3 ms alone, 120 ms so).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def module_state(module: nn.Module) -> dict[str, object]:
    """Everything a failed call must leave alone: state_dict (keys, values, dtypes), the
    parameter objects, forward pre-hooks, parametrizations, buffers and the class."""
    state = {}
    for mod_name, mod in module.named_modules():
        state[mod_name] = {
            "class": type(mod),
            "params": {n: (id(p), p.shape, p.requires_grad) for n, p in mod._parameters.items()},
            "buffers": sorted(mod._buffers),
            "pre_hooks": [(k, type(h).__name__) for k, h in mod._forward_pre_hooks.items()],
            "hooks": list(mod._forward_hooks),
            "parametrized": sorted(mod.parametrizations)
            if parametrize.is_parametrized(mod)
            else [],
            "attrs": sorted(vars(mod)),
        }
    state["__state_dict__"] = {
        k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
        for k, v in module.state_dict().items()
    }
    return state


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN equals itself, -0.0 differs from +0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    as_bytes = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
    return torch.equal(*as_bytes)


def assert_same_state(module: nn.Module, before: dict[str, object]) -> None:
    after = module_state(module)
    sd_before, sd_after = before["__state_dict__"], after["__state_dict__"]
    assert list(sd_after) == list(sd_before)
    for key, value in sd_before.items():
        if isinstance(value, torch.Tensor):
            assert sd_after[key].dtype == value.dtype, key
            assert bitwise_equal(sd_after[key], value), key
        else:
            assert sd_after[key] == value, key
    assert {k: v for k, v in after.items() if k != "__state_dict__"} == {
        k: v for k, v in before.items() if k != "__state_dict__"
    }


@pytest.fixture
def unchanged():
    """``with unchanged(module): <failing call>`` asserts the module is exactly as before."""
    import contextlib

    @contextlib.contextmanager
    def check(module: nn.Module):
        before = module_state(module)
        yield
        assert_same_state(module, before)

    return check
