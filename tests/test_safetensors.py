"""Checkpoints that hold only tensors: safetensors round trips, 0.1.0 dict state, safe loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from torchprune_share import (
    CheckpointError,
    WeightSharing,
    compressed_tensors,
    level_prune,
    load_state_dict,
    recluster,
    register_weight_sharing,
)
from torchprune_share.config import SharingConfig

from .conftest import bitwise_equal


def build(dtype: torch.dtype = torch.float32) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 6)).to(dtype)


def per_tensor(m):
    register_weight_sharing(m[0], bits=3)
    register_weight_sharing(m[2], bits=2)


def per_channel(m):
    register_weight_sharing(m[0], bits=2, granularity="per_channel")
    register_weight_sharing(m[2], bits=3, granularity="per_channel", channel_axis=1)


def pruned(m):
    level_prune(m[0], amount=0.5)
    level_prune(m[2], amount=0.8)
    level_prune(m[2], "bias", amount=2)


def both(m):
    pruned(m)
    register_weight_sharing(m[0], bits=2)
    register_weight_sharing(m[2], bits=4, granularity="per_channel")


CASES = {"per_tensor": per_tensor, "per_channel": per_channel, "pruned": pruned, "both": both}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_safetensors_round_trip_is_bitwise(case, dtype, tmp_path):
    torch.manual_seed(0)
    model = build(dtype)
    CASES[case](model)
    sd = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    path = tmp_path / "model.safetensors"
    save_file(sd, path)
    fresh = build(dtype)
    load_state_dict(fresh, load_file(path))
    x = torch.randn(3, 2, 6, 6, dtype=dtype)
    assert bitwise_equal(fresh(x), model(x))
    loaded = {q: p for q, _, _, p in compressed_tensors(fresh)}
    assert len(loaded) == len(compressed_tensors(model))
    for q, _, _, a in compressed_tensors(model):
        b = loaded[q]
        assert type(a) is type(b)
        if isinstance(a, WeightSharing):
            assert a.config == b.config and a.num_centroids == b.num_centroids
            assert a.index.dtype == b.index.dtype
    # Still trainable: the codebooks / dense originals get gradients.
    fresh(x).float().sum().backward()
    assert all(p.grad is not None for p in fresh.parameters() if p.requires_grad)


def test_a_checkpoint_of_0_1_0_with_dict_state_still_loads():
    torch.manual_seed(1)
    model = build()
    both(model)
    sd = model.state_dict()
    for key in [k for k in sd if k.endswith("_extra_state")]:
        config, k = SharingConfig.from_state(sd[key])
        sd[key] = {  # what 0.1.0's WeightSharing.get_extra_state returned
            "bits": config.bits,
            "granularity": config.granularity,
            "channel_axis": config.channel_axis,
            "init": config.init,
            "method": config.method,
            "num_centroids": k,
        }
    fresh = load_state_dict(build(), sd)
    x = torch.randn(2, 2, 6, 6)
    assert bitwise_equal(fresh(x), model(x))
    assert fresh[2].parametrizations.weight[0].config == SharingConfig(
        bits=4, granularity="per_channel", init="linear"
    )
    # torch's own loader takes the dict too (set_extra_state), into a model of that shape.
    twin = load_state_dict(build(), model.state_dict())
    twin.load_state_dict(sd)
    assert bitwise_equal(twin(x), model(x))


def shared_pair():
    torch.manual_seed(2)
    src, dst = nn.Linear(16, 8), nn.Linear(16, 8)
    register_weight_sharing(src, bits=3)
    register_weight_sharing(dst, bits=3)
    recluster(dst, bits=2)
    return src, dst


def snapshot(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_failed_torch_load_leaves_a_shared_module_as_it_was():
    """Issue 10 defect 7: a 3-bit checkpoint into a module reclustered to 2 bits."""
    src, dst = shared_pair()
    x = torch.randn(4, 16)
    before, y = snapshot(dst), dst(x).detach()
    sd = {k: v for k, v in src.state_dict().items() if k != "bias"}
    with pytest.raises(RuntimeError, match="cannot resize it: load with torchprune_share"):
        dst.load_state_dict(sd, strict=False)
    after = snapshot(dst)
    assert all(bitwise_equal(after[k], v) for k, v in before.items())
    assert bitwise_equal(dst(x), y)
    assert dst.parametrizations.weight[0].bits == 2
    # The library's loader re-creates the sharing at the checkpoint's width.
    load_state_dict(dst, src.state_dict())
    assert bitwise_equal(dst(x), src(x))
    assert dst.parametrizations.weight[0].bits == 3


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda sd, k: sd[k + "0.index"].fill_(9), r"index codes must lie in \[0, 8\], got 9\.\.9"),
        (
            lambda sd, k: sd.__setitem__(k + "0._extra_state", SharingConfig(bits=3).to_state(9)),
            r"num_centroids must be an int in \[0, 2\*\*bits = 8\], got 9",
        ),
        (
            lambda sd, k: sd.__setitem__(k + "0.index", sd[k + "0.index"][:4]),
            r"index has shape \(4, 16\), the module's \(8, 16\)",
        ),
    ],
)
def test_torch_load_checks_every_entry_before_copying_any(change, match):
    src, dst = shared_pair()
    recluster(dst, bits=3)  # same codebook size: torch would copy the codebook first
    before = snapshot(dst)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    change(sd, "parametrizations.weight.")
    with pytest.raises(RuntimeError, match=match):
        dst.load_state_dict(sd)
    after = snapshot(dst)
    for key in before:
        if key != "bias":  # torch copies plain tensors before raising (its behaviour)
            assert bitwise_equal(after[key], before[key]), key


def test_a_code_that_does_not_fit_the_index_dtype_is_refused():
    """256 centroids plus the pruned zero: code 256 would wrap to 0 in a uint8 index."""
    torch.manual_seed(3)
    src, dst = nn.Linear(64, 64), nn.Linear(64, 64)
    level_prune(src, amount=0.1)
    register_weight_sharing(src, bits=8)
    register_weight_sharing(dst, bits=8)
    assert src.parametrizations.weight[0].index.dtype == torch.int32
    assert dst.parametrizations.weight[0].index.dtype == torch.uint8
    assert dst.parametrizations.weight.original.shape == (256,)
    before = snapshot(dst)
    with pytest.raises(RuntimeError, match=r"does not fit this module's torch\.uint8 index"):
        dst.load_state_dict(src.state_dict())
    assert all(bitwise_equal(snapshot(dst)[k], v) for k, v in before.items() if k != "bias")
    load_state_dict(dst, src.state_dict())
    x = torch.randn(2, 64)
    assert bitwise_equal(dst(x), src(x))


def test_sharing_registered_directly_with_parametrize_also_checks():
    """Without the library's chain hook, WeightSharing still refuses its own entries."""
    lin = nn.Linear(4, 4)
    ws = WeightSharing(torch.zeros(4, 4, dtype=torch.uint8), torch.tensor([0.5, 1.0]), bits=1)
    parametrize.register_parametrization(lin, "weight", ws, unsafe=True)
    sd = snapshot(lin)
    sd["parametrizations.weight.0.index"] = torch.full((4, 4), 5, dtype=torch.uint8)
    before = snapshot(lin)
    with pytest.raises(RuntimeError, match=r"index codes must lie in \[0, 2\]"):
        lin.load_state_dict(sd)
    assert torch.equal(
        lin.parametrizations.weight[0].index, before["parametrizations.weight.0.index"]
    )


def test_library_loader_names_the_tensor_for_a_bad_safetensors_state(tmp_path):
    model = build()
    per_tensor(model)
    sd = model.state_dict()
    sd["2.parametrizations.weight.0._extra_state"] = torch.tensor([1, 99, 0, 0, 0, 0, 4])
    save_file(sd, tmp_path / "bad.safetensors")
    fresh = build()
    before = snapshot(fresh)
    with pytest.raises(
        CheckpointError, match=r"tensor '2.weight': .*bits must be an int in \[1, 16\], got 99"
    ):
        load_state_dict(fresh, load_file(tmp_path / "bad.safetensors"))
    assert not compressed_tensors(fresh)
    assert all(bitwise_equal(snapshot(fresh)[k], v) for k, v in before.items())
