"""Compressing under a caller's ``torch.inference_mode()`` or ``torch.autocast`` builds the
same, trainable model.

Calibration is often wrapped in ``torch.inference_mode()``. Tensors created there are
inference tensors: a mask or codebook made of them would leave a model that no forward
recorded by autograd can run again ("Inference tensors cannot be saved for backward"),
which is what torch's own ``prune`` does. Under autocast the numeric core's products
would run in bfloat16, or fail on mixed dtypes. Every public call that builds or changes
a model's state is shielded from both (``registration.builds_state``); these tests make
each call under each mode and outside it, and compare.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchprune_share as tps
from torchprune_share.schedules import AGPSchedule


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _calibration() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 16, generator=g) for _ in range(3)]


def _shared(m: nn.Module) -> None:
    tps.register_weight_sharing(m[0], "weight", bits=3)


def _saved(m: nn.Module) -> bytes:
    out = copy.deepcopy(m)
    tps.level_prune(out[0], "weight", 0.5)
    tps.register_weight_sharing(out[0], "weight", bits=3)
    buf = io.BytesIO()
    tps.save_compressed(out, buf)
    return buf.getvalue()


def _state_dict(m: nn.Module) -> dict[str, torch.Tensor]:
    out = copy.deepcopy(m)
    tps.level_prune(out[0], "weight", 0.5)
    tps.register_weight_sharing(out[2], "weight", bits=2)
    return out.state_dict()


def _agp(m: nn.Module) -> None:
    pruner = tps.LevelPruner({"*": AGPSchedule(0.0, 0.8, 0, 4)}, model=m)
    for _ in range(4):
        pruner.step(update_masks=True)


CALLS: dict[str, Callable[[nn.Module], object]] = {
    "LevelPruner.prune": lambda m: tps.LevelPruner({"*": 0.5}).prune(m),
    "LevelPruner.prune, calibrated": lambda m: tps.LevelPruner({"*": 0.5}).prune(
        m, calibration=_calibration(), progress=False
    ),
    "LevelPruner.step": _agp,
    "Quantizer.quantize": lambda m: tps.Quantizer({"*": 3}).quantize(m),
    "Quantizer.quantize, calibrated": lambda m: tps.Quantizer(
        {"*": 3}, granularity="per_channel"
    ).quantize(m, calibration=_calibration(), progress=False),
    "level_prune": lambda m: tps.level_prune(m[0], "weight", 0.5),
    "global_level_prune": lambda m: tps.global_level_prune(
        [(m[0], "weight"), (m[2], "weight")], 0.5
    ),
    "sigma_prune": lambda m: tps.sigma_prune(m[0], "weight", 1.0),
    "LevelPruningMethod.apply": lambda m: tps.LevelPruningMethod.apply(m[0], "weight", 0.5),
    "SigmaThresholdPruningMethod.apply": lambda m: tps.SigmaThresholdPruningMethod.apply(
        m[0], "weight", 1.0
    ),
    "register_weight_sharing": _shared,
    "recluster": lambda m: (_shared(m), tps.recluster(m[0], "weight", bits=2)),
    "bake": lambda m: (_shared(m), tps.bake(m)),
    # The checkpoint as torch.load leaves it under the caller's mode: inference tensors
    # there.
    "load_state_dict": lambda m: tps.load_state_dict(
        m, {k: v.clone() for k, v in _SOURCE["state_dict"].items()}
    ),
    "load_compressed": lambda m: tps.load_compressed(m, _SOURCE["saved"]),
}
_SOURCE: dict[str, object] = {}


@pytest.fixture(autouse=True, scope="module")
def _sources():
    _SOURCE.update(state_dict=_state_dict(_net()), saved=_saved(_net()))


@pytest.mark.parametrize("call", list(CALLS))
def test_a_model_compressed_under_inference_mode_trains_and_equals_the_normal_one(call):
    expected, got = _net(), _net()
    CALLS[call](expected)
    with torch.inference_mode():
        CALLS[call](got)
    state = got.state_dict()
    assert state.keys() == expected.state_dict().keys()
    for key, value in state.items():
        assert not value.is_inference(), key
        torch.testing.assert_close(value, expected.state_dict()[key], rtol=0, atol=0)
    # A training step runs, and reaches every trainable tensor the normal model trains.
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    got(x).square().sum().backward()
    expected(x).square().sum().backward()
    for (name, p), (_, q) in zip(got.named_parameters(), expected.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)


def test_to_inference_under_inference_mode_builds_normal_tensors():
    expected, got = _net(), _net()
    for m in (expected, got):
        tps.level_prune(m[0], "weight", 0.5)
    fast = tps.to_inference(expected, backend="dense", progress=False)
    with torch.inference_mode():
        built = tps.to_inference(got, backend="dense", progress=False)
    assert not any(t.is_inference() for t in built.state_dict().values())
    x = torch.randn(3, 16)
    torch.testing.assert_close(built(x), fast(x))


def test_a_model_built_under_inference_mode_is_compressed_there_as_before():
    # Its weights are inference tensors, which torch updates in place only in inference
    # mode: the calls leave the mode on, and the model works there.
    x = torch.randn(3, 16)
    with torch.inference_mode():
        net = _net()
        dense = net(x)
        tps.level_prune(net[0], "weight", 0.5)
        tps.register_weight_sharing(net[2], "weight", bits=8)
        tps.Quantizer({"0.weight": 4}).quantize(net)
        assert float((net[0].weight == 0).float().mean()) == 0.5
        assert (net(x) - dense).abs().max() < 0.5


@pytest.mark.parametrize("call", list(CALLS))
def test_a_model_compressed_under_autocast_equals_the_normal_one(call):
    expected, got = _net(), _net()
    CALLS[call](expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        CALLS[call](got)
    state = got.state_dict()
    assert state.keys() == expected.state_dict().keys()
    for key, value in state.items():
        torch.testing.assert_close(value, expected.state_dict()[key], rtol=0, atol=0)
