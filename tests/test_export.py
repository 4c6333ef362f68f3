"""torch.func, torch.export and TorchScript through compressed (not baked) models.

Issue 10 defects 5 and 6: on 0.1.0, ``torch.func.grad``/``vmap`` refused the gather
(no ``setup_context``), ``torch.export.export`` failed on the cache's ``data_ptr()`` of a
fake tensor, and ``torch.jit.trace``/``script`` failed with internal errors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchprune_share import bake, level_prune, register_weight_sharing
from torchprune_share.codebook import SPREAD

from .conftest import bitwise_equal


def pruned(m):
    level_prune(m[0], amount=0.5)
    level_prune(m[2], amount=0.7)


def shared(m):
    register_weight_sharing(m[0], bits=3)
    register_weight_sharing(m[2], bits=2, granularity="per_channel")


def both(m):
    pruned(m)
    shared(m)


CASES = {"pruned": pruned, "shared": shared, "pruned+shared": both}


def build(case: str) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    CASES[case](m)
    return m


def gather(m: nn.Module):
    """The shared layer's gather as a function of its codebook, and that codebook."""
    ws = m[0].parametrizations.weight[0]
    codebook = m[0].parametrizations.weight.original
    return (lambda cb: ws(cb)), codebook


def test_func_grad_of_the_codebook_equals_autograd():
    m = build("pruned+shared")
    f, codebook = gather(m)
    target = torch.randn(16, 12)

    def loss(cb):
        return ((f(cb) - target) ** 2).sum()

    want = torch.autograd.grad(loss(codebook), codebook)[0]
    got = torch.func.grad(loss)(codebook.detach())
    assert got.shape == codebook.shape == (8,)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # The zero code gets no gradient and every centroid's is the sum over its weights.
    idx = m[0].parametrizations.weight[0].index.long()
    g = 2 * (f(codebook.detach()) - target)
    for c in range(8):
        torch.testing.assert_close(got[c], g[idx == c].sum(), rtol=0, atol=1e-5)


def test_func_grad_through_the_whole_model_with_functional_call():
    m = build("shared")
    x, y = torch.randn(4, 12), torch.randint(0, 5, (4,))
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p):
        out = torch.func.functional_call(m, p, (x,))
        return nn.functional.cross_entropy(out, y)

    grads = torch.func.grad(loss)(params)
    nn.functional.cross_entropy(m(x), y).backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=0, atol=1e-6, msg=name)
    assert grads["2.parametrizations.weight.original"].shape == (5, 4)


def test_vmap_over_a_batch_of_codebooks():
    m = build("pruned+shared")
    f, codebook = gather(m)
    batch = torch.randn(6, *codebook.shape)
    out = torch.func.vmap(f)(batch)
    assert out.shape == (6, 16, 12)
    for i in range(6):
        assert bitwise_equal(out[i], f(batch[i]))
    # per-example gradients: vmap of grad
    per = torch.func.vmap(torch.func.grad(lambda cb: f(cb).square().sum()))(batch)
    assert per.shape == (6, 8)
    torch.testing.assert_close(per[2], torch.func.grad(lambda cb: f(cb).square().sum())(batch[2]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_keeps_the_compressed_form_and_equals_eager(case):
    m = build(case)
    x = torch.randn(3, 12)
    program = torch.export.export(m, (x,))
    exported = program.module()
    assert bitwise_equal(exported(x), m(x))
    if case != "pruned":
        # The small codebook and the index are the program's state, no dense weight.
        state = program.state_dict
        codebooks = {k: v.shape for k, v in state.items() if k.endswith("weight.original")}
        assert codebooks == {
            "0.parametrizations.weight.original": torch.Size([8]),
            "2.parametrizations.weight.original": torch.Size([5, 4]),
        }
        consts = {**state, **program.constants}
        assert any(k.endswith("weight.0.index") for k in consts)
    # Exporting put no fake tensor into the gather cache: eager still runs and matches.
    if case != "pruned":
        ws = m[0].parametrizations.weight[0]
        assert ws._cache is None or ws._cache.numel() == 16 * 12
    y = m(x)
    assert bitwise_equal(exported(x), y)


def test_export_follows_dynamic_batch_sizes():
    m = build("pruned+shared")
    batch = torch.export.Dim("batch")
    program = torch.export.export(m, (torch.randn(3, 12),), dynamic_shapes=({0: batch},))
    x = torch.randn(7, 12)
    assert bitwise_equal(program.module()(x), m(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit itself is deprecated
@pytest.mark.parametrize("case", sorted(CASES))
def test_jit_trace_works_and_script_names_bake(case):
    m = build(case)
    x = torch.randn(3, 12)
    traced = torch.jit.trace(m, (x,))
    other = torch.randn(5, 12)
    assert bitwise_equal(traced(other), m(other))
    with pytest.raises(RuntimeError, match=r"torchprune_share\.bake\(model\)"):
        torch.jit.script(m)
    scripted = torch.jit.script(bake(m))  # the route the message names
    assert bitwise_equal(scripted(other), m(other))


def test_the_cache_is_still_used_in_eager_mode():
    m = build("shared")
    ws = m[0].parametrizations.weight[0]
    m(torch.randn(2, 12))
    first = ws._cache
    m(torch.randn(2, 12))
    assert first is not None and ws._cache is first and first.numel() == 16 * 12
    assert int(first.max()) < SPREAD * 9
