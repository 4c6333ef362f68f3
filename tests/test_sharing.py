"""Trained k-means weight sharing: exact formula, Eq. 3 gradients, composition, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from torchprune_share import (
    LevelPruningMethod,
    WeightSharing,
    bake,
    level_prune,
    recluster,
    register_weight_sharing,
)
from torchprune_share.codebook import CodebookGather, index_dtype
from torchprune_share.kmeans import kmeans1d

FAST = settings(max_examples=20, deadline=None)


# -- helpers ---------------------------------------------------------------------------
def sharing(module: nn.Module, name: str = "weight") -> WeightSharing:
    (reparam,) = module.parametrizations[name]
    assert isinstance(reparam, WeightSharing)
    return reparam


def codebook(module: nn.Module, name: str = "weight") -> nn.Parameter:
    return module.parametrizations[name].original


def table_lookup(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``cat(codebook, 0)[index]`` computed independently of the parametrization."""
    ws, cb = sharing(module, name), codebook(module, name).detach()
    table = torch.cat([cb, cb.new_zeros(*cb.shape[:-1], 1)], dim=-1)
    idx = ws.index.long()
    if ws.granularity == "per_tensor":
        return table[idx]
    moved = idx.movedim(ws.channel_dim, 0)
    rows = torch.gather(table, 1, moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
    return rows.movedim(0, ws.channel_dim)


def distinct_nonzero(t: torch.Tensor) -> int:
    return int(torch.unique(t[t != 0]).numel())


def per_cluster_sum(grad: torch.Tensor, ws: WeightSharing) -> torch.Tensor:
    """Deep Compression Eq. 3 by hand: sum of dL/dW over the weights of each centroid."""
    k, idx = ws.num_centroids, ws.index.long()
    if ws.granularity == "per_tensor":
        return torch.stack([grad[idx == c].sum() for c in range(k)])
    g = grad.movedim(ws.channel_dim, 0)
    i = idx.movedim(ws.channel_dim, 0)
    return torch.stack(
        [torch.stack([g[ch][i[ch] == c].sum() for c in range(k)]) for ch in range(g.shape[0])]
    )


def dense_grad(module: nn.Module, loss_fn, name: str = "weight") -> torch.Tensor:
    """dL/dW from a plain (baked) copy of the module: the dense weight's gradient."""
    plain = bake(copy.deepcopy(module))
    plain.zero_grad(set_to_none=True)
    loss_fn(plain).backward()
    return getattr(plain, name).grad


# -- the parametrization -------------------------------------------------------------------
@FAST
@given(
    rows=st.integers(1, 16),
    cols=st.integers(1, 16),
    bits=st.integers(1, 6),
    amount=st.floats(0.0, 0.9),
)
def test_weight_is_codebook_lookup(rows, cols, bits, amount):
    lin = nn.Linear(cols, rows)
    level_prune(lin, amount=amount)
    zeros_before = lin.weight == 0
    register_weight_sharing(lin, bits=bits)
    ws, cb = sharing(lin), codebook(lin)
    assert type(cb) is nn.Parameter and cb.dtype == torch.float32 and cb.dim() == 1
    assert cb.numel() <= 2**bits and ws.num_centroids == cb.numel()
    assert torch.equal(lin.weight, table_lookup(lin))
    assert distinct_nonzero(lin.weight) <= 2**bits
    assert not ws.index.is_floating_point() and ws.index.shape == lin.weight.shape
    assert ws.index.dtype == torch.uint8  # <= 64 centroids + the zero
    # The zero pattern is exactly the pruning pattern (no centroid is 0 here).
    assert torch.equal(~ws.kept(), zeros_before)
    assert torch.equal(lin.weight == 0, zeros_before)
    # No empty cluster: every centroid owns at least one weight.
    counts = torch.bincount(ws.index[ws.kept()].long(), minlength=cb.numel())
    assert bool((counts > 0).all())


def test_codebook_is_kmeans_of_survivors_only():
    lin = nn.Linear(30, 20)
    dense = lin.weight.detach().clone()
    level_prune(lin, amount=0.6)
    mask = lin.weight != 0
    register_weight_sharing(lin, bits=3)
    centroids, labels = kmeans1d(dense[mask], 8)
    assert torch.equal(codebook(lin).detach(), centroids)
    assert torch.equal(sharing(lin).index[mask].long(), labels)
    assert bool((sharing(lin).index[~mask] == 8).all())
    # Each surviving weight sits in its nearest cluster.
    dist = (dense[mask][:, None] - centroids[None, :]).abs()
    assert torch.equal(dist.gather(1, labels[:, None]).squeeze(1), dist.min(1).values)


def test_fewer_distinct_values_than_codes():
    values = torch.tensor([-1.0, 0.5, 2.0])
    w = values[torch.randint(0, 3, (9, 7))]
    w[0, :3] = values  # every value present
    lin = nn.Linear(7, 9)
    with torch.no_grad():
        lin.weight.copy_(w)
    register_weight_sharing(lin, bits=4)
    assert torch.equal(codebook(lin).detach(), values)  # a 3-entry codebook, not 16
    assert torch.equal(lin.weight, w)
    assert bool((torch.bincount(sharing(lin).index.long().reshape(-1), minlength=3) > 0).all())
    # A constant tensor gets a one-entry codebook.
    const = nn.Linear(4, 4)
    with torch.no_grad():
        const.weight.fill_(0.25)
    register_weight_sharing(const, bits=8)
    assert codebook(const).tolist() == [0.25] and bool((const.weight == 0.25).all())


def test_index_dtypes():
    # 8 bits, no pruned entry: 256 codes fit uint8.
    lin = nn.Linear(64, 64)
    register_weight_sharing(lin, bits=8)
    ws = sharing(lin)
    assert ws.num_centroids == 256 and ws.index.dtype == torch.uint8
    assert bool(ws.kept().all())  # code 0 is a centroid, not the zero (uint8 wrap)
    # 8 bits of a pruned tensor: 256 centroids + the zero = 257 codes -> int32 (documented;
    # int16 would be smaller but DDP cannot broadcast it).
    lin = level_prune(nn.Linear(64, 64), amount=0.5)
    register_weight_sharing(lin, bits=8)
    ws = sharing(lin)
    assert ws.num_centroids == 256 and ws.index.dtype == torch.int32
    assert int(ws.index.max()) == 256 and int((ws.index == 256).sum()) == 2048
    # Fewer than 256 centroids plus the zero still fit uint8.
    lin = level_prune(nn.Linear(10, 10), amount=0.5)
    register_weight_sharing(lin, bits=8)
    assert sharing(lin).num_centroids == 50 and sharing(lin).index.dtype == torch.uint8
    assert sharing(register_weight_sharing(nn.Linear(64, 64), bits=9)).index.dtype == torch.int32
    assert index_dtype(0) == index_dtype(255) == torch.uint8
    assert index_dtype(256) == index_dtype(2**16) == torch.int32


def test_pruning_an_8bit_shared_tensor_counts_exactly():
    lin = nn.Linear(64, 64)
    register_weight_sharing(lin, bits=8)
    cb = codebook(lin).detach().clone()
    old_index = sharing(lin).index.long().clone()
    level_prune(lin, amount=0.1)
    ws = sharing(lin)
    assert int((lin.weight == 0).sum()) == round(0.1 * 4096)
    assert ws.index.dtype == torch.int32  # code 256 is now in use
    pruned = ws.index == 256
    assert torch.equal(ws.index.long()[~pruned], old_index[~pruned])
    assert torch.equal(codebook(lin).detach(), cb)
    assert torch.equal(lin.weight, table_lookup(lin))


# -- Deep Compression Eq. 3 ------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_codebook_gradient_is_per_cluster_sum(granularity):
    lin = nn.Linear(12, 8).double()
    level_prune(lin, amount=0.5)
    register_weight_sharing(lin, bits=2, granularity=granularity)
    x = torch.randn(5, 12, dtype=torch.float64)

    def loss_fn(m):
        return (m(x) ** 3).sum()  # dL/dW differs per weight, large at pruned ones too

    expected = per_cluster_sum(dense_grad(lin, loss_fn), sharing(lin))
    loss_fn(lin).backward()
    grad = codebook(lin).grad
    assert grad.shape == codebook(lin).shape  # no slot for the zero
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    # The pruned weights' gradients are not in any centroid: the sum over all centroids
    # is the sum over the kept entries only.
    full = dense_grad(lin, loss_fn)
    kept = sharing(lin).kept()
    torch.testing.assert_close(grad.sum(), full[kept].sum(), rtol=1e-12, atol=1e-12)
    assert abs(float(full[~kept].sum())) > 1e-6


def test_gather_gradcheck_float64():
    cb = torch.randn(5, dtype=torch.float64, requires_grad=True)
    flat = torch.tensor([0, 5, 3, 3, 1, 4, 5, 0, 2, 2, 2, 4], dtype=torch.int32)  # 5 = zero
    shape = torch.Size([3, 4])
    assert torch.autograd.gradcheck(lambda c: CodebookGather.apply(c, flat, shape), (cb,))
    # Per channel: 3 codebooks of 4, flat index into the (3, 5) table.
    ws = WeightSharing(
        torch.randint(0, 5, (3, 6), dtype=torch.uint8), bits=2, granularity="per_channel"
    )
    cb2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    flat2 = ws.flat_index(4)
    assert torch.autograd.gradcheck(
        lambda c: CodebookGather.apply(c, flat2, torch.Size([3, 6])), (cb2,)
    )
    out = CodebookGather.apply(cb2, flat2, torch.Size([3, 6]))
    assert bool((out[ws.index == 4] == 0).all())


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    ],
    ids=["sgd_momentum_wd", "adam"],
)
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_training_keeps_zero_pattern_and_distinct_bound(make_opt, granularity):
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    bits = 3
    for layer in (net[0], net[2]):
        level_prune(layer, amount=0.7)
        register_weight_sharing(layer, bits=bits, granularity=granularity)
    zero_before = [layer.weight == 0 for layer in (net[0], net[2])]
    index_before = [sharing(layer).index.clone() for layer in (net[0], net[2])]
    cb_before = [codebook(layer).detach().clone() for layer in (net[0], net[2])]
    opt = make_opt(net.parameters())
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for layer, zb, ib, cbb in zip((net[0], net[2]), zero_before, index_before, cb_before):
        ws = sharing(layer)
        assert torch.equal(ws.index, ib)  # training never touches the index
        assert not torch.equal(codebook(layer).detach(), cbb)  # but it moves the centroids
        assert torch.equal(layer.weight == 0, zb)  # zero pattern unchanged
        assert torch.equal(layer.weight, table_lookup(layer))
        if granularity == "per_tensor":
            assert distinct_nonzero(layer.weight) <= 2**bits
        else:
            assert all(distinct_nonzero(row) <= 2**bits for row in layer.weight)


# -- composition with pruning ------------------------------------------------------------
def test_share_then_prune_moves_entries_to_zero_code():
    lin = nn.Linear(20, 10)
    register_weight_sharing(lin, bits=3)
    cb = codebook(lin).detach().clone()
    shared = lin.weight.detach().clone()
    index = sharing(lin).index.clone()
    level_prune(lin, amount=0.4)
    ws = sharing(lin)
    assert len(lin.parametrizations.weight) == 1  # still one parametrization
    assert int((lin.weight == 0).sum()) == 80
    pruned = ws.index == 8
    assert int(pruned.sum()) == 80
    assert torch.equal(ws.index[~pruned], index[~pruned])
    assert torch.equal(codebook(lin).detach(), cb)
    assert torch.equal(lin.weight[~pruned], shared[~pruned])
    assert shared.abs()[pruned].max() <= shared.abs()[~pruned].min()
    level_prune(lin, amount=0.5)  # further, among the 120 survivors
    assert int((lin.weight == 0).sum()) == 140
    assert torch.equal(lin.weight, table_lookup(lin))


def test_prune_then_share_replaces_the_mask():
    lin = nn.Linear(20, 10)
    level_prune(lin, amount=0.5)
    mask = lin.parametrizations.weight[0].mask.clone()
    param_id = id(lin.parametrizations.weight.original)
    register_weight_sharing(lin, bits=2)
    assert len(lin.parametrizations.weight) == 1
    assert torch.equal(sharing(lin).kept(), mask)
    assert sorted(lin.state_dict()) == [
        "bias",
        "parametrizations.weight.0._extra_state",
        "parametrizations.weight.0.index",
        "parametrizations.weight.original",
    ]
    # The Parameter object is kept (an optimizer's reference stays valid), now the codebook.
    assert id(codebook(lin)) == param_id and codebook(lin).shape == (4,)


@pytest.mark.parametrize(
    "torch_prune",
    [
        lambda m: prune.l1_unstructured(m, "weight", amount=0.4),
        lambda m: LevelPruningMethod.apply(m, "weight", amount=0.4),
        lambda m: (
            LevelPruningMethod.apply(m, "weight", amount=0.2),
            prune.l1_unstructured(m, "weight", amount=0.25),  # a PruningContainer
        ),
    ],
    ids=["l1_unstructured", "level_method", "container"],
)
def test_share_adopts_torch_pruning(torch_prune):
    lin = nn.Linear(10, 10)
    torch_prune(lin)
    mask = lin.weight_mask.bool().clone()
    survivors = lin.weight_orig.detach()[mask]
    register_weight_sharing(lin, bits=2)
    assert not lin._forward_pre_hooks and not prune.is_pruned(lin)
    assert not hasattr(lin, "weight_orig") and not hasattr(lin, "weight_mask")
    assert torch.equal(sharing(lin).kept(), mask)
    assert torch.equal(lin.weight == 0, ~mask)
    assert torch.equal(codebook(lin).detach(), kmeans1d(survivors, 4)[0])


def test_torch_pruning_a_shared_tensor_is_refused():
    lin = register_weight_sharing(nn.Linear(4, 4), bits=2)
    with pytest.raises(TypeError):
        prune.l1_unstructured(lin, "weight", amount=0.5)


def test_recluster_keeps_zero_pattern():
    lin = level_prune(nn.Linear(32, 16), amount=0.5)
    register_weight_sharing(lin, bits=4)
    zeros = lin.weight == 0
    lin(torch.randn(2, 32)).sum().backward()
    recluster(lin, bits=2)
    assert codebook(lin).numel() == 4 and codebook(lin).grad is None
    assert torch.equal(lin.weight == 0, zeros)
    assert distinct_nonzero(lin.weight) <= 4
    lin(torch.randn(2, 32)).sum().backward()  # no stale gradient of the old shape
    assert codebook(lin).grad.shape == (4,)
    with pytest.raises(TypeError, match="unexpected keyword"):
        recluster(lin, bits=2, colour="red")
    with pytest.raises(ValueError, match="name='weight' is not shared"):
        recluster(nn.Linear(2, 2))


def test_assigning_a_tensor_reclusters():
    lin = level_prune(nn.Linear(8, 8), amount=0.5)
    register_weight_sharing(lin, bits=2)
    zeros = lin.weight == 0
    lin.weight = torch.randn(8, 8) * 10
    assert torch.equal(lin.weight == 0, zeros)
    assert distinct_nonzero(lin.weight) <= 4
    assert lin.weight.abs().max() > 2  # the new values, not the old codebook


def test_sharing_a_fully_pruned_tensor():
    lin = level_prune(nn.Linear(4, 3), amount=1.0)
    register_weight_sharing(lin, bits=2)
    assert codebook(lin).numel() == 0 and bool((lin.weight == 0).all())
    lin(torch.randn(2, 4)).sum().backward()
    assert codebook(lin).grad.shape == (0,)


def test_existing_gradient_is_cleared():
    lin = nn.Linear(8, 8)
    lin(torch.randn(2, 8)).sum().backward()
    register_weight_sharing(lin, bits=2)
    assert codebook(lin).grad is None
    lin(torch.randn(2, 8)).sum().backward()
    assert codebook(lin).grad.shape == (4,)


def test_requires_grad_false_is_kept():
    lin = nn.Linear(4, 4)
    lin.weight.requires_grad_(False)
    register_weight_sharing(lin, bits=2)
    assert not codebook(lin).requires_grad


# -- granularity -----------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_invariants(axis):
    conv = nn.Conv2d(3, 6, 3)
    level_prune(conv, amount=0.3)
    dense = conv.weight.detach().clone()
    mask = dense != 0
    register_weight_sharing(conv, bits=2, granularity="per_channel", channel_axis=axis)
    ws, cb = sharing(conv), codebook(conv)
    channels = dense.shape[axis]
    assert cb.shape[0] == channels and cb.shape[1] <= 4
    assert torch.equal(conv.weight, table_lookup(conv))
    assert torch.equal(conv.weight == 0, ~mask)
    w = conv.weight.detach().movedim(axis, 0)
    assert all(distinct_nonzero(w[c]) <= 4 for c in range(channels))
    # Each channel is the batched k-means of its own surviving weights.
    rows = dense.movedim(axis, 0).reshape(channels, -1)
    rmask = mask.movedim(axis, 0).reshape(channels, -1)
    centroids, labels = kmeans1d(rows, 4, sample_weight=rmask.double())
    assert torch.equal(cb.detach(), centroids)
    codes = ws.index.movedim(axis, 0).reshape(channels, -1).long()
    assert torch.equal(codes[rmask], labels[rmask])


def test_per_channel_fully_pruned_channel():
    lin = nn.Linear(5, 4)
    scores = torch.ones(4, 5)
    scores[2] = 0  # channel 2 goes entirely
    level_prune(lin, amount=5, importance_scores=scores)
    register_weight_sharing(lin, bits=1, granularity="per_channel")
    assert bool((lin.weight[2] == 0).all()) and int((lin.weight == 0).sum()) == 5
    assert torch.equal(lin.weight, table_lookup(lin))


# -- module kinds, dtypes, devices ------------------------------------------------------------
MODULES = {
    "linear": (lambda: nn.Linear(6, 5), lambda: torch.randn(3, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda: torch.randn(2, 3, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), lambda: torch.randn(2, 3, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda: torch.randn(2, 2, 4, 4, 4)),
    "embedding": (lambda: nn.Embedding(10, 6), lambda: torch.randint(0, 10, (4, 3))),
}


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_module_kinds(kind, granularity):
    make, make_x = MODULES[kind]
    module = make().double()
    x = make_x()
    x = x.double() if x.is_floating_point() else x
    level_prune(module, amount=0.5)
    register_weight_sharing(module, bits=3, granularity=granularity)
    n = module.weight.numel()
    assert int((module.weight == 0).sum()) == round(0.5 * n)
    assert torch.equal(module.weight, table_lookup(module))
    plain = bake(copy.deepcopy(module))
    assert torch.equal(module(x), plain(x))  # same values, same ops: bitwise

    def loss_fn(m):
        return m(x).pow(2).sum()

    expected = per_cluster_sum(dense_grad(module, loss_fn), sharing(module))
    loss_fn(module).backward()
    torch.testing.assert_close(codebook(module).grad, expected, rtol=1e-12, atol=1e-12)


def test_bias_and_custom_parameter_name():
    module = nn.Linear(8, 6)
    module.gain = nn.Parameter(torch.randn(6, 4))
    register_weight_sharing(module, "bias", bits=1)
    level_prune(module, "gain", amount=0.25)
    register_weight_sharing(module, "gain", bits=2)
    assert distinct_nonzero(module.bias) <= 2 and codebook(module, "bias").numel() == 2
    assert torch.equal(module.gain, table_lookup(module, "gain"))
    assert int((module.gain == 0).sum()) == 6
    assert sorted(module.parametrizations) == ["bias", "gain"]
    # A 0-D parameter (one value) shares per tensor.
    module.scale = nn.Parameter(torch.tensor(0.7))
    register_weight_sharing(module, "scale", bits=1)
    assert module.scale.shape == () and module.scale.item() == pytest.approx(0.7)


def test_deepcopy_is_independent():
    lin = level_prune(nn.Linear(8, 8), amount=0.5)
    register_weight_sharing(lin, bits=2)
    x = torch.randn(3, 8)
    lin(x)  # fill the index cache
    twin = copy.deepcopy(lin)
    assert torch.equal(twin(x), lin(x))
    assert sharing(twin).index.data_ptr() != sharing(lin).index.data_ptr()
    with torch.no_grad():
        codebook(twin).add_(1.0)
    level_prune(twin, amount=0.5)
    assert not torch.equal(twin.weight, lin.weight)
    assert torch.equal(lin.weight, table_lookup(lin))
    assert torch.equal(twin.weight, table_lookup(twin))
    assert int((lin.weight == 0).sum()) == 32 and int((twin.weight == 0).sum()) == 48


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_conversion_keeps_integer_index(dtype):
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    level_prune(net[0], amount=0.5)
    register_weight_sharing(net[0], bits=3)
    register_weight_sharing(level_prune(net[1], amount=0.25), bits=8)
    before = [layer.weight.detach().clone() for layer in net]
    index = [sharing(layer).index.clone() for layer in net]
    net.to(dtype) if dtype != torch.float16 else net.half()
    for layer, w, idx in zip(net, before, index):
        ws = sharing(layer)
        assert codebook(layer).dtype == dtype and layer.weight.dtype == dtype
        assert torch.equal(ws.index, idx)  # dtype and values unchanged
        assert not ws.index.is_floating_point()
        assert torch.equal(layer.weight, w.to(dtype))
    x = torch.randn(2, 8, dtype=dtype)
    net(x).float().sum().backward()
    for layer in net:
        assert codebook(layer).grad.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    level_prune(net[0], amount=0.5)
    register_weight_sharing(net[0], bits=8)  # 256 centroids + zero: int32
    register_weight_sharing(net[2], bits=2, granularity="per_channel")
    x = torch.randn(3, 32)
    y = net(x)
    net.cuda()
    assert sharing(net[0]).index.is_cuda and sharing(net[0]).index.dtype == torch.int32
    torch.testing.assert_close(net(x.cuda()).cpu(), y)
    plain = bake(copy.deepcopy(net))
    plain(x.cuda()).sum().backward()
    expected = per_cluster_sum(plain[2].weight.grad, sharing(net[2]))
    net(x.cuda()).sum().backward()
    torch.testing.assert_close(codebook(net[2]).grad, expected)
    level_prune(net[2], amount=0.5)  # the zero-code move runs on the device
    assert int((net[2].weight == 0).sum()) == 64
    assert torch.equal(net[2].weight, table_lookup(net[2]))
    # Pruning and sharing a tensor that lives on the GPU (kthvalue threshold there).
    lin = level_prune(nn.Linear(32, 32).cuda(), amount=0.3)
    assert int((lin.weight == 0).sum()) == round(0.3 * 1024)
    register_weight_sharing(lin, bits=4)
    assert codebook(lin).is_cuda and sharing(lin).index.is_cuda
    assert torch.equal(lin.weight, table_lookup(lin))


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "exc"),
    [
        (0, ValueError),
        (17, ValueError),
        (-3, ValueError),
        (2.0, TypeError),
        ("4", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_bits(unchanged, bits, exc):
    lin = level_prune(nn.Linear(4, 4), amount=0.5)
    with unchanged(lin), pytest.raises(exc, match=r"bits must be an int in \[1, 16\]"):
        register_weight_sharing(lin, bits=bits)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"init": "zeros"}, ValueError, "init must be one of"),
        ({"method": "magic"}, ValueError, "method must be one of"),
        ({"granularity": "per_row"}, ValueError, "granularity must be one of"),
        (
            {"granularity": "per_channel", "channel_axis": 2},
            ValueError,
            r"channel_axis must be in \[-2, 1\]",
        ),
        (
            {"granularity": "per_channel", "channel_axis": 0.0},
            TypeError,
            "channel_axis must be an int",
        ),
    ],
)
def test_bad_settings(unchanged, kwargs, exc, match):
    lin = nn.Linear(4, 4)
    with unchanged(lin), pytest.raises(exc, match=match):
        register_weight_sharing(lin, bits=2, **kwargs)


def test_per_channel_of_a_scalar_is_refused(unchanged):
    module = nn.Module()
    module.scale = nn.Parameter(torch.tensor(0.5))
    with unchanged(module), pytest.raises(ValueError, match='granularity="per_channel" needs'):
        register_weight_sharing(module, "scale", bits=1, granularity="per_channel")


def test_sharing_twice_is_refused(unchanged):
    lin = register_weight_sharing(level_prune(nn.Linear(4, 4), amount=0.5), bits=2)
    with (
        unchanged(lin),
        pytest.raises(ValueError, match=r"name='weight' is already shared .*recluster"),
    ):
        register_weight_sharing(lin, bits=3)


def test_bad_name(unchanged):
    bn = nn.BatchNorm1d(3)
    with (
        unchanged(bn),
        pytest.raises(ValueError, match="name='running_var' is not a parameter of BatchNorm1d"),
    ):
        register_weight_sharing(bn, "running_var", bits=2)
    lin = nn.Linear(3, 3)
    lin.codes = nn.Parameter(torch.ones(3, dtype=torch.int32), requires_grad=False)
    with (
        unchanged(lin),
        pytest.raises(TypeError, match="name='codes' must name a floating-point tensor"),
    ):
        register_weight_sharing(lin, "codes", bits=2)
    with unchanged(lin), pytest.raises(ValueError, match="name='nope' is not a parameter"):
        register_weight_sharing(lin, "nope", bits=2)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weight(unchanged, bad):
    lin = level_prune(nn.Linear(3, 3), amount=0.3)
    kept = lin.parametrizations.weight[0].mask
    with torch.no_grad():
        lin.parametrizations.weight.original[tuple(kept.nonzero()[0])] = bad
    with unchanged(lin), pytest.raises(ValueError, match=r"Linear\.weight contains NaN or Inf"):
        register_weight_sharing(lin, bits=2)
    # A non-finite value behind the mask is not part of the tensor: it shares fine.
    with torch.no_grad():
        lin.parametrizations.weight.original[tuple(kept.nonzero()[0])] = 0.5
        lin.parametrizations.weight.original[tuple((~kept).nonzero()[0])] = bad
    register_weight_sharing(lin, bits=2)
    assert bool(torch.isfinite(lin.weight).all()) and int((lin.weight == 0).sum()) == 3


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_empty_tensor(unchanged):
    emb = nn.Embedding(0, 4)
    with unchanged(emb), pytest.raises(ValueError, match="name='weight' names an empty tensor"):
        register_weight_sharing(emb, bits=2)
