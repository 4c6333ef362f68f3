"""Compressed inference: the modules match the baked dense model, and refuse what they must."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import bake, level_prune, register_weight_sharing
from torchprune_share.inference import (
    CompressedConv1d,
    CompressedConv2d,
    CompressedLinear,
    build_layout,
    inference_module,
    inference_summary,
    to_inference,
    weight_parts,
)
from torchprune_share.inference.kernels import chunk_bounds
from torchprune_share.inference.layout import pack_nibbles, unpack_nibbles

BACKENDS = ("kernel", "csr", "dense")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach(), ref.detach()
    return float(
        (y.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)
    )


def baked(module: nn.Module) -> nn.Module:
    ref = copy.deepcopy(module)
    bake(ref)
    return ref


def shared_linear(n_in=96, n_out=40, amount=0.8, bits=4, granularity="per_tensor"):
    lin = nn.Linear(n_in, n_out)
    level_prune(lin, amount=amount)
    register_weight_sharing(lin, bits=bits, granularity=granularity)
    return lin


# -- the layout -----------------------------------------------------------------------------
def test_nibbles_round_trip_and_layout_sizes():
    codes = np.arange(33) % 16
    packed = pack_nibbles(codes)
    assert packed.size == 17 and np.array_equal(unpack_nibbles(packed, 33), codes)
    lay = build_layout(3, 70_000, np.array([5, 69_999, 140_001]), values=np.ones(3))
    assert lay.cols.dtype == np.int32 and lay.rowptr.tolist() == [0, 2, 2, 3]
    lay = build_layout(3, 4, np.array([1, 2]), np.array([300, 2]), torch.zeros(400))
    assert lay.payload.dtype == np.uint16 and lay.decoder == "code"


def test_layout_rejects_bad_parts():
    with pytest.raises(ValueError, match="strictly increasing"):
        build_layout(2, 2, np.array([2, 1]), values=np.ones(2))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 2\)"):
        build_layout(2, 2, np.array([0, 1]), np.array([0, 2]), torch.zeros(2))
    with pytest.raises(ValueError, match="out_features=2, k"):
        build_layout(2, 2, np.array([0, 1]), np.array([0, 1]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="exactly one"):
        build_layout(2, 2, np.array([0]))
    with pytest.raises(ValueError, match="bitmap"):
        build_layout(2, 2, np.ones(3, bool), values=np.ones(3))
    with pytest.raises(TypeError, match="kept"):
        build_layout(2, 2, [0, 1], values=np.ones(2))


def test_chunk_bounds_balance_kept_entries():
    rowptr = np.array([0, 100, 100, 101, 200, 300])
    assert chunk_bounds(rowptr, 3).tolist() == [0, 1, 4, 5]
    assert chunk_bounds(np.zeros(4, np.int64), 2).tolist() == [0, 0, 3]


# -- linear layers match the baked dense layer ----------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_shared_linear_matches_dense(bits, granularity):
    lin = shared_linear(bits=bits, granularity=granularity)
    ref = baked(lin)
    for backend in BACKENDS:
        fast = CompressedLinear.from_linear(lin, backend=backend)
        for batch in (1, 3, 8, 9, 16, 40):
            x = torch.randn(batch, 96)
            assert rel_err(fast(x), ref(x)) < 1e-5, (backend, batch)


@pytest.mark.parametrize("how", ["mask", "torch-hook", "plain", "shared-on-hook"])
def test_every_way_of_holding_a_weight(how):
    lin = nn.Linear(50, 30)
    if how == "mask":
        level_prune(lin, amount=0.7)
    elif how in ("torch-hook", "shared-on-hook"):
        prune.l1_unstructured(lin, "weight", amount=0.7)
        if how == "shared-on-hook":
            register_weight_sharing(lin, bits=3)
    x = torch.randn(6, 50)
    expected = lin(x).detach()  # a hook-pruned module cannot be deep-copied (pytorch#37322)
    fast = CompressedLinear.from_linear(lin)
    assert rel_err(fast(x), expected) < 1e-5
    assert fast.nnz == int((lin.weight != 0).sum())


def test_edge_layers_empty_rows_full_pruning_one_centroid_wide_codes():
    lin = nn.Linear(20, 8)
    with torch.no_grad():
        lin.weight[2:5] = 0  # rows with no kept weight
    level_prune(lin, amount=0.5)
    ref = baked(lin)
    x = torch.randn(5, 20)
    for backend in BACKENDS:
        assert rel_err(CompressedLinear.from_linear(lin, backend=backend)(x), ref(x)) < 1e-5

    empty = nn.Linear(20, 8)
    level_prune(empty, amount=1.0)
    fast = CompressedLinear.from_linear(empty)
    assert fast.nnz == 0 and torch.equal(fast(x), baked(empty)(x))

    one = CompressedLinear.from_parts(
        3, 4, np.array([0, 5, 11]), np.zeros(3, np.int64), torch.tensor([0.5])
    )
    assert one(torch.ones(1, 4)).tolist() == [[0.5, 0.5, 0.5]]

    wide = shared_linear(n_in=400, n_out=12, amount=0.0, bits=9)
    fast = CompressedLinear.from_linear(wide)
    assert fast.code_bits == 9 and fast.payload.dtype == torch.uint16
    x = torch.randn(3, 400)
    assert rel_err(fast(x), baked(wide)(x)) < 1e-5


def test_per_channel_codebook_with_padded_rows():
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1, 1, 1, 1, 1], [1, 2, 3, 4, 5, 6]]).repeat(2, 1))
    register_weight_sharing(lin, bits=2, granularity="per_channel")
    codebook = lin.parametrizations.weight.original
    assert codebook.shape == (4, 4)  # rows of a single value are padded
    x = torch.randn(2, 6)
    assert rel_err(CompressedLinear.from_linear(lin)(x), baked(lin)(x)) < 1e-5


def test_input_channel_codebooks_become_values():
    lin = nn.Linear(12, 5)
    level_prune(lin, amount=0.5)
    register_weight_sharing(lin, bits=2, granularity="per_channel", channel_axis=1)
    fast = CompressedLinear.from_linear(lin)
    assert fast.code_bits is None
    x = torch.randn(3, 12)
    assert rel_err(fast(x), baked(lin)(x)) < 1e-5


def test_inputs_dtypes_shapes_and_bad_input():
    lin = shared_linear()
    ref = baked(lin)
    fast = CompressedLinear.from_linear(lin)
    x = torch.randn(2, 3, 96)
    assert fast(x).shape == (2, 3, 40) and rel_err(fast(x), ref(x)) < 1e-5
    xt = torch.randn(96, 7).t()  # non-contiguous
    assert rel_err(fast(xt), ref(xt.contiguous())) < 1e-5
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = fast(x.to(dtype))
        assert y.dtype == dtype
        assert rel_err(y.float(), ref(x.to(dtype).float())) < 1e-2
    assert fast(torch.randn(0, 96)).shape == (0, 40)
    fast.layer_name = "fc1"
    with pytest.raises(ValueError, match=r"'fc1'.*96 in its last dimension"):
        fast(torch.randn(2, 95))
    with pytest.raises(TypeError, match="floating point"):
        fast(torch.ones(2, 96, dtype=torch.int64))


def test_nan_and_inf_propagate_as_dense():
    lin = nn.Linear(64, 30)
    level_prune(lin, amount=0.9)
    ref = baked(lin)
    x = torch.randn(4, 64)
    x[0, 3] = float("nan")
    x[1, 10] = float("inf")
    x[2, 20] = -float("inf")
    r = ref(x)
    for backend in BACKENDS:
        y = CompressedLinear.from_linear(lin, backend=backend)(x)
        assert torch.equal(torch.isnan(y), torch.isnan(r)), backend
        assert torch.equal(torch.isinf(y), torch.isinf(r)), backend
        finite = torch.isfinite(r)
        assert torch.allclose(y[finite], r[finite], atol=1e-5), backend
    assert bool(torch.isnan(r[0]).all()) and 0 < int(torch.isnan(r[1]).sum()) < 30


def ragged_linear(how: str, seed: int) -> nn.Linear:
    """Rows of every length 0..40: odd starts, tails shorter than the 8-entry unroll."""
    torch.manual_seed(seed)
    lin = nn.Linear(48, 41)
    lengths = torch.arange(41)
    keep = torch.rand(41, 48).argsort(dim=1) < lengths[:, None]
    level_prune(lin, amount=int((~keep).sum()), importance_scores=keep.float() + 1)
    if how != "pruned only":
        bits, gran = (4, "per_tensor") if how == "4-bit" else (8, "per_channel")
        register_weight_sharing(lin, bits=bits, granularity=gran)
    return lin


@pytest.mark.parametrize("how", ["4-bit", "8-bit per channel", "pruned only"])
def test_batch_one_path_matches_dense_and_follows_replaced_buffers(how):
    lin = ragged_linear(how, 0)
    ref = baked(lin)
    fast = CompressedLinear.from_linear(lin)
    with torch.inference_mode():
        for _ in range(3):
            x = torch.randn(1, 48)
            assert rel_err(fast(x), ref(x)) < 1e-5
        x = torch.randn(1, 48)
        x[0, 5] = float("nan")
        y, r = fast(x), ref(x)
        assert torch.equal(torch.isnan(y), torch.isnan(r)) and bool(torch.isnan(y).all())
        # Buffers replaced after a call (as .to() or assignment do) are the ones used next.
        other = CompressedLinear.from_linear(ragged_linear(how, 1))
        x = torch.randn(1, 48)
        fast(x)
        for name, buf in other.named_buffers():
            setattr(fast, name, buf.clone())
        assert torch.equal(fast(x), other(x))


def test_bitwise_deterministic_for_any_thread_count():
    lin = shared_linear(n_in=512, n_out=256, amount=0.5)
    fast = CompressedLinear.from_linear(lin)
    before = torch.get_num_threads()
    for batch in (1, 24):
        x = torch.randn(batch, 512)
        try:
            torch.set_num_threads(1)
            y1 = fast(x)
            torch.set_num_threads(2)
            y2, y3 = fast(x), fast(x)
        finally:
            torch.set_num_threads(before)
        assert torch.equal(y1, y2) and torch.equal(y2, y3)


def test_memory_at_90_percent_and_4_bits():
    lin = shared_linear(n_in=1024, n_out=1024, amount=0.9, bits=4)
    fast = CompressedLinear.from_linear(lin)
    dense_bytes = 4 * (1024 * 1024 + 1024)
    assert fast.nbytes <= dense_bytes / 12
    assert fast.payload.numel() == (fast.nnz + 1) // 2 and fast.cols.dtype == torch.uint16


# -- autograd, inference_mode, torch.compile --------------------------------------------------
def test_backward_is_refused_and_inference_mode_works():
    fast = CompressedLinear.from_linear(shared_linear())
    x = torch.randn(3, 96, requires_grad=True)
    y = fast(x)
    with pytest.raises(RuntimeError, match="inference module and has no backward"):
        y.sum().backward()
    with torch.inference_mode():
        assert fast(torch.randn(3, 96)).shape == (3, 40)


def test_torch_compile_runs_around_the_kernel():
    torch._dynamo.reset()
    net = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    level_prune(net[0], amount=0.9)
    register_weight_sharing(net[0], bits=4)
    ref = baked(net)
    net = to_inference(net, backend="kernel", progress=False)
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(4, 96)
    with torch.inference_mode():
        assert rel_err(compiled(x), ref(x)) < 1e-5


# -- the file route -----------------------------------------------------------------------------
def test_from_parts_builds_the_same_module_as_conversion():
    lin = shared_linear(granularity="per_channel")
    converted = CompressedLinear.from_linear(lin)
    ws = lin.parametrizations.weight[0]
    keep = ws.kept()
    positions = torch.nonzero(keep.reshape(-1)).reshape(-1).numpy()
    codes = ws.index.reshape(-1)[keep.reshape(-1)].numpy()
    codebook = lin.parametrizations.weight.original.detach()
    for kept in (positions, keep.numpy()):
        built = CompressedLinear.from_parts(40, 96, kept, codes, codebook, bias=lin.bias.detach())
        for key, buf in converted.named_buffers():
            assert torch.equal(buf, dict(built.named_buffers())[key]), key
        x = torch.randn(5, 96)
        assert torch.equal(built(x), converted(x))
    pruned = nn.Linear(10, 4)
    level_prune(pruned, amount=0.5)
    parts = weight_parts(pruned)
    built = CompressedLinear.from_parts(4, 10, parts.positions, values=parts.values, bias=None)
    x = torch.randn(2, 10)
    assert rel_err(built(x), nn.functional.linear(x, baked(pruned).weight)) < 1e-5
    with pytest.raises(ValueError, match="bias must have shape"):
        CompressedLinear.from_parts(4, 10, parts.positions, values=parts.values, bias=torch.ones(3))


def test_inference_module_builds_convolutions_from_parts():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    level_prune(conv, amount=0.6)
    register_weight_sharing(conv, bits=3, granularity="per_channel")
    converted = CompressedConv2d.from_conv(conv)
    p = weight_parts(conv)
    fresh = nn.Conv2d(3, 4, 3, padding=1)  # its own weight and bias are never read
    built = inference_module(fresh, p.positions, p.codes, p.codebook, bias=conv.bias, name="c")
    x = torch.randn(2, 3, 6, 6)
    assert type(built) is CompressedConv2d and torch.equal(built(x), converted(x))
    auto = inference_module(fresh, p.positions, p.codes, p.codebook, backend="auto", repeats=1)
    assert (
        auto.backend in BACKENDS
        and rel_err(auto(x), converted(x) - conv.bias[:, None, None]) < 1e-5
    )
    with pytest.raises(TypeError, match=r"nn\.Linear, nn\.Conv1d or nn\.Conv2d"):
        inference_module(nn.ReLU(), p.positions, values=np.ones(p.positions.size))


# -- convolutions -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_convolutions_match_dense(backend):
    conv2 = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
    level_prune(conv2, amount=0.7)
    register_weight_sharing(conv2, bits=3, granularity="per_channel")
    conv1 = nn.Conv1d(4, 6, 5, stride=2, padding=2, dilation=2)
    level_prune(conv1, amount=0.6)
    for conv, cls, x in (
        (conv2, CompressedConv2d, torch.randn(2, 3, 11, 9)),
        (conv1, CompressedConv1d, torch.randn(3, 4, 30)),
    ):
        ref = baked(conv)
        fast = cls.from_conv(conv, backend=backend)
        assert rel_err(fast(x), ref(x)) < 1e-5
        assert rel_err(fast(x[0]), ref(x[0])) < 1e-5  # unbatched
        x_nan = x.clone()
        x_nan[0, 0, 2] = float("inf")
        assert torch.equal(torch.isnan(fast(x_nan)), torch.isnan(ref(x_nan)))


# -- to_inference -----------------------------------------------------------------------------
def test_to_inference_converts_compressed_layers_only(caplog, monkeypatch):
    # Time even these small layers (below SMALL_LAYER they take dense untimed).
    monkeypatch.setattr("torchprune_share.inference.convert.SMALL_LAYER", 0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.Linear(32, 8))
    level_prune(net[0], amount=0.9)
    register_weight_sharing(net[0], bits=4)
    prune.l1_unstructured(net[2], "weight", amount=0.5)
    x = torch.randn(5, 64)
    expected = net(x).detach()
    out = to_inference(net, progress=False, repeats=1, batch_sizes=(1, 4))
    assert out is net
    assert [type(m).__name__ for m in net] == [
        "CompressedLinear",
        "ReLU",
        "CompressedLinear",
        "Linear",
    ]
    assert not parametrize.is_parametrized(net[0]) and rel_err(net(x), expected) < 1e-5
    summary = inference_summary(net)
    assert [r.name for r in summary.rows] == ["0", "2"]
    assert set(summary.rows[0].seconds) == {"dense", "csr", "kernel"}
    assert all(len(t) == 2 and min(t) > 0 for t in summary.rows[0].seconds.values())
    assert f"backend={summary.rows[0].backend!r}" in repr(net[0]) and "0" in str(summary)
    assert summary.nbytes <= summary.dense_bytes == 4 * (64 * 64 + 64 + 64 * 32 + 32)
    with pytest.raises(ValueError, match=r"CompressedLinear '2': expected input with 64"):
        net[2](torch.randn(1, 63))

    plain = nn.Sequential(nn.Linear(4, 4))
    with caplog.at_level(logging.INFO, logger="torchprune_share.inference.convert"):
        assert to_inference(plain, progress=False) is plain
    assert "nothing to do" in caplog.text and type(plain[0]) is nn.Linear


def test_to_inference_leaves_what_it_cannot_convert(caplog):
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    net = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(8, 8))
    parametrize.register_parametrization(net[0], "weight", Double())
    level_prune(net[1], amount=0.5)
    level_prune(net[2], amount=0.5)
    with caplog.at_level(logging.INFO, logger="torchprune_share.inference.convert"):
        to_inference(net, backend="kernel", progress=False)
    assert parametrize.is_parametrized(net[0]) and parametrize.is_parametrized(net[1])
    assert type(net[2]) is CompressedLinear and net[2].backend == "kernel"
    assert "foreign parametrization" in caplog.text and "grouped" in caplog.text

    root = nn.Linear(8, 4)
    level_prune(root, amount=0.5)
    assert type(to_inference(root, backend="csr", progress=False)) is CompressedLinear
    with pytest.raises(ValueError, match="backend must be one of"):
        to_inference(nn.Linear(2, 2), backend="fast")


def test_to_inference_times_convolutions_at_the_example_size(monkeypatch):
    monkeypatch.setattr("torchprune_share.inference.convert.SMALL_LAYER", 0)
    net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 12 * 12, 10))
    level_prune(net[0], amount=0.5)
    level_prune(net[3], amount=0.9)
    ref = baked(net)
    x = torch.randn(2, 1, 16, 16)
    to_inference(net, example_inputs=x[:1], progress=False, repeats=1, batch_sizes=(1,))
    assert rel_err(net(x), ref(x)) < 1e-5
    assert inference_summary(net).rows[0].batch_sizes == (1,)


# -- without numba ---------------------------------------------------------------------------
def test_without_numba_layers_fall_back_to_torch_csr():
    code = textwrap.dedent(
        """
        import logging, sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        import torch
        from torch import nn
        from torchprune_share import level_prune, bake
        from torchprune_share.inference import CompressedLinear, KERNELS_AVAILABLE
        lin = nn.Linear(30, 20)
        level_prune(lin, amount=0.8)
        a = CompressedLinear.from_linear(lin)
        b = CompressedLinear.from_linear(lin)
        x = torch.randn(3, 30)
        bake(lin)
        err = float((a(x) - lin(x)).abs().max() / lin(x).abs().max())
        print(KERNELS_AVAILABLE, a.backend, b.backend, err < 1e-5)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "csr", "csr", "True"]
    assert run.stderr.count("numba is not installed") == 1


def test_small_layers_take_dense_untimed_and_cost_what_nn_linear_costs():
    from torchprune_share.inference.convert import SMALL_LAYER

    lin = nn.Linear(64, 32)
    level_prune(lin, "weight", amount=0.5)
    assert 64 * 32 < SMALL_LAYER
    net = to_inference(nn.Sequential(lin))
    row = inference_summary(net).rows[0]
    assert row.backend == "dense" and not row.seconds
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(net(x), F.linear(x, net[0].weight_dense, net[0].bias))
