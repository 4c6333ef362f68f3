"""Tests for torchprune_share.fileformat: the compressed model file and its report."""

from __future__ import annotations

import builtins
import csv
import io
import os
import pickle
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import (
    PruningMask,
    WeightSharing,
    compressed_tensors,
    level_prune,
    register_weight_sharing,
)
from torchprune_share import fileformat as ff
from torchprune_share.codec import encode, pack_bits
from torchprune_share.codec.wire import encode_varint
from torchprune_share.fileformat import (
    CompressedFileError,
    compression_report,
    load_compressed,
    reader,
    save_compressed,
    writer,
)
from torchprune_share.parametrizations import index_dtype

# TORCHPRUNE_SHARE_EXAMPLES=5000 runs a long campaign (the default keeps the file ~15 s).
_SCALE = int(os.environ.get("TORCHPRUNE_SHARE_EXAMPLES", "0")) or None
FAST = settings(deadline=None, max_examples=_SCALE or 100, suppress_health_check=list(HealthCheck))
FUZZ = settings(deadline=None, max_examples=_SCALE or 250, suppress_health_check=list(HealthCheck))


# -- helpers ----------------------------------------------------------------------------
def _raw(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN, -0.0 and dtype included)."""
    return a.dtype == b.dtype and a.shape == b.shape and _raw(a) == _raw(b)


def _reparams(model: nn.Module) -> list[tuple]:
    out = []
    for q, _, _, p in compressed_tensors(model):
        extra = p.get_extra_state().tolist() if isinstance(p, WeightSharing) else None
        out.append((q, type(p).__name__, extra))
    return out


def snapshot(model: nn.Module) -> tuple:
    state = {
        k: _raw(v) + str((v.dtype, tuple(v.shape))).encode() if isinstance(v, torch.Tensor) else v
        for k, v in model.state_dict().items()
    }
    params = [(n, type(p).__name__, p.requires_grad) for n, p in model.named_parameters()]
    return list(state), state, _reparams(model), params


def seal(payload: bytes, *, version: int = ff.VERSION, flags: int = 0, magic: bytes = ff.MAGIC):
    """A file around ``payload`` with a correct length and CRC."""
    return ff.PREAMBLE.pack(magic, version, flags, len(payload), zlib.crc32(payload)) + payload


def reseal(blob: bytes) -> bytes:
    """Recompute the preamble's payload length and CRC after a mutation."""
    if len(blob) < ff.PREAMBLE.size:
        return blob
    magic, version, flags, _, _ = ff.PREAMBLE.unpack_from(blob)
    return seal(blob[ff.PREAMBLE.size :], version=version, flags=flags, magic=magic)


def assert_rejected(model: nn.Module, blob: bytes, *fragments: str) -> str:
    """Loading ``blob`` raises CompressedFileError naming ``fragments``; model untouched."""
    before = snapshot(model)
    with pytest.raises(CompressedFileError) as info:
        load_compressed(model, blob)
    assert snapshot(model) == before
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_loaded_equal(saved: nn.Module, loaded: nn.Module, x: torch.Tensor) -> None:
    """``loaded`` is ``saved``: state, reparametrizations, tensors and outputs, bitwise."""
    assert _reparams(loaded) == _reparams(saved)
    s_state, l_state = saved.state_dict(), loaded.state_dict()
    assert list(l_state) == list(s_state)
    masks = {k: v for k, v in s_state.items() if k.endswith(".0.mask")}
    for key, want in s_state.items():
        got = l_state[key]
        mask_key = key[: -len("original")] + "0.mask"
        if key.endswith(".original") and mask_key in masks:
            # Pruned values are not stored: kept entries exact, pruned ones +0.0.
            mask = masks[mask_key]
            zero = torch.zeros_like(want)
            assert _same(got, torch.where(mask, want, zero)), key
        elif isinstance(want, torch.Tensor):
            assert _same(got, want), key
        else:
            assert got == want, key
    for q, module, name, _ in compressed_tensors(loaded):
        saved_module = saved.get_submodule(q.rpartition(".")[0])
        assert _same(getattr(module, name), getattr(saved_module, name)), q
        original = module.parametrizations[name].original
        assert type(original) is nn.Parameter and original.requires_grad, q
        assert len(module.parametrizations[name]) == 1
    for (name, p), (name2, p2) in zip(saved.named_parameters(), loaded.named_parameters()):
        assert name == name2 and type(p) is type(p2)
    saved.eval()
    loaded.eval()
    with torch.no_grad():
        assert _same(loaded(x), saved(x))


def assert_baked_equal(saved: nn.Module, baked: nn.Module, x: torch.Tensor) -> None:
    assert compressed_tensors(baked) == []
    for q, module, name, _ in compressed_tensors(saved):
        param = baked.get_submodule(q.rpartition(".")[0])._parameters[name]
        assert type(param) is nn.Parameter, q
        assert _same(param, getattr(module, name)), q
    saved.eval()
    baked.eval()
    with torch.no_grad():
        assert _same(baked(x), saved(x))


class Holder(nn.Module):
    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape, generator=gen).to(dtype))


class Net(nn.Module):
    """Tensors of the drawn shapes and dtype, a 4-D conv, a batch norm and a NaN buffer."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.holders = nn.ModuleList(Holder(s, dtype, gen) for s in shapes)
        self.conv = nn.Conv2d(2, 3, 3, padding=1).to(dtype)
        self.bn = nn.BatchNorm2d(3).to(dtype)
        with torch.no_grad():
            for p in [*self.conv.parameters(), *self.bn.parameters()]:
                p.copy_(torch.randn(p.shape, generator=gen).to(dtype))
        extra = torch.tensor([float("nan"), -0.0, float("inf"), seed], dtype=dtype)
        self.register_buffer("extra", extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.bn(self.conv(x)).reshape(-1), self.extra]
        parts += [h.weight.reshape(-1) * 3 for h in self.holders]
        return torch.cat(parts)


def net_input(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)).to(dtype)


def compress(module: nn.Module, spec: dict) -> None:
    mode, amount, bits = spec["mode"], spec["amount"], spec["bits"]
    kwargs = {"granularity": spec["granularity"], "channel_axis": spec["axis"]}
    weight = module.weight
    if spec["granularity"] == "per_channel":
        kwargs["channel_axis"] = spec["axis"] % weight.dim() if weight.dim() else 0
        if weight.dim() == 0:
            kwargs["granularity"] = "per_tensor"
    if spec["few_values"]:  # fewer distinct values than 2**bits: k_eff < 2**bits
        with torch.no_grad():
            weight.copy_(torch.round(weight * 2) / 2)
    if mode in ("pruned", "pruned+shared"):
        level_prune(module, amount=amount)
    if mode in ("shared", "pruned+shared", "shared+pruned"):
        register_weight_sharing(module, bits=bits, **kwargs)
    if mode == "shared+pruned":
        level_prune(module, amount=amount)


tensor_specs = st.fixed_dictionaries(
    {
        "shape": st.one_of(
            st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
            st.sampled_from([(), (1,), (1, 1), (1, 1, 1, 1), (40, 30), (3, 2, 3, 3)]),
        ),
        "mode": st.sampled_from(["plain", "pruned", "shared", "pruned+shared", "shared+pruned"]),
        "amount": st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
        "bits": st.integers(1, 16),
        "granularity": st.sampled_from(["per_tensor", "per_channel"]),
        "axis": st.integers(-4, 3),
        "few_values": st.booleans(),
    }
)


def build(specs: list[dict], dtype: torch.dtype, seed: int, compressed: bool) -> Net:
    net = Net([s["shape"] for s in specs], dtype, seed)
    if compressed:
        net.train()
        with torch.no_grad():
            net(net_input(dtype))  # moves the running stats and num_batches_tracked
        for holder, spec in zip(net.holders, specs):
            compress(holder, spec)
        conv_spec = dict(specs[0], shape=None)
        compress(net.conv, conv_spec)
    return net


class Parallel(nn.ModuleList):
    """Linear layers side by side, each on the first ``in_features`` inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x[:, : m.in_features]) for m in self], dim=1)


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    return net


def small_compressed(seed: int = 0) -> nn.Sequential:
    net = small_model(seed)
    net.train()
    net(torch.randn(4, 6))
    register_weight_sharing(level_prune(net[0], amount=0.6), bits=2)
    level_prune(net[2], amount=0.5)
    return net


def save_bytes(model: nn.Module, **kwargs) -> bytes:
    buf = io.BytesIO()
    n = save_compressed(model, buf, **kwargs)
    assert n == len(buf.getvalue())
    return buf.getvalue()


# -- round trips ------------------------------------------------------------------------
@FAST
@given(
    specs=st.lists(tensor_specs, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
    huffman=st.booleans(),
    index_bits=st.one_of(st.none(), st.integers(1, 16)),
    seed=st.integers(0, 1000),
)
def test_round_trip_property(specs, dtype, huffman, index_bits, seed):
    saved = build(specs, dtype, seed, compressed=True)
    blob = save_bytes(saved, huffman=huffman, index_bits=index_bits)
    x = net_input(dtype)
    fresh = build(specs, dtype, seed + 1, compressed=False)
    assert load_compressed(fresh, blob) is fresh
    assert_loaded_equal(saved, fresh, x)
    baked = load_compressed(build(specs, dtype, seed + 2, compressed=False), blob, bake=True)
    assert_baked_equal(saved, baked, x)
    report = compression_report(blob)
    assert report.file_bytes == len(blob) == sum(r["PQH"] for r in report.rows) + report.overhead
    if index_bits is not None:
        assert {r["index_bits"] for r in report.rows} <= {None, index_bits}


@pytest.mark.parametrize("index_bits", range(1, 17))
@pytest.mark.parametrize("huffman", [False, True])
def test_fixed_index_bits(index_bits, huffman):
    torch.manual_seed(index_bits)
    saved = Parallel([nn.Linear(300, 7), nn.Linear(50, 4)])
    mask = torch.rand(7, 300) < 0.02
    mask[0, 0] = mask[6, 299] = True
    mask[3, :] = False  # a gap of >= 300: fillers at every width up to 8 bits
    parametrize.register_parametrization(saved[0], "weight", PruningMask(mask))
    register_weight_sharing(level_prune(saved[1], amount=0.7), bits=3)
    blob = save_bytes(saved, index_bits=index_bits, huffman=huffman)
    fresh = Parallel([nn.Linear(300, 7), nn.Linear(50, 4)])
    assert_loaded_equal(saved, load_compressed(fresh, blob), torch.randn(3, 300))
    rows = {r["tensor"]: r for r in compression_report(blob).rows}
    assert rows["0.weight"]["index_bits"] == rows["1.weight"]["index_bits"] == index_bits
    records, _ = reader.parse(blob)
    gaps = records[1].streams[0]
    assert gaps.count == len(writer.gap_symbols(np.flatnonzero(mask.reshape(-1)), index_bits))
    if index_bits == 1:  # a gap of g entries is g one-entry fillers: a symbol per entry
        assert gaps.count == int(np.flatnonzero(mask.reshape(-1).numpy())[-1]) + 1


def test_fully_pruned_and_empty_tensors():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    net[0].register_buffer("empty", torch.zeros(0, 5))
    level_prune(net[0], amount=1.0)
    register_weight_sharing(level_prune(net[1], amount=1.0), bits=4)
    register_weight_sharing(net[2], bits=4)
    level_prune(net[2], amount=1.0)  # shared first: keeps its codebook, all entries zero
    blob = save_bytes(net)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    fresh[0].register_buffer("empty", torch.ones(0, 5))
    assert_loaded_equal(net, load_compressed(fresh, blob), torch.randn(2, 4))
    rows = {r["tensor"]: r for r in compression_report(blob).rows}
    assert rows["0.weight"]["density"] == rows["1.weight"]["density"] == 0.0
    assert fresh[1].parametrizations.weight.original.shape == (0,)
    assert fresh[2].parametrizations.weight.original.shape == (4,)
    assert rows["0.empty"]["weights"] == 0


def test_index_dtypes_and_full_codebooks():
    """8-bit sharing: 256 codes + zero need a wider index; 256 codes without zero fit uint8."""
    torch.manual_seed(0)
    net = Parallel([nn.Linear(40, 40), nn.Linear(40, 40), nn.Linear(300, 300)])
    register_weight_sharing(level_prune(net[0], amount=0.1), bits=8)
    register_weight_sharing(net[1], bits=8)
    register_weight_sharing(level_prune(net[2], amount=0.5), bits=16)
    dtypes = [p.index.dtype for *_, p in compressed_tensors(net)]
    assert dtypes == [index_dtype(256), torch.uint8, index_dtype(45_000)] != [torch.uint8] * 3
    assert net[1].parametrizations.weight[0].num_centroids == 256
    blob = save_bytes(net)
    fresh = Parallel([nn.Linear(40, 40), nn.Linear(40, 40), nn.Linear(300, 300)])
    assert_loaded_equal(net, load_compressed(fresh, blob), torch.randn(2, 300))


def test_bfloat16_and_int_buffers_round_trip():
    net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)).to(torch.bfloat16)
    net[1].register_buffer("flags", torch.tensor([True, False, True]))
    net[1].register_buffer("counts", torch.arange(-3, 3, dtype=torch.int8))
    net[1].num_batches_tracked.fill_(2**40 + 3)
    register_weight_sharing(level_prune(net[0], amount=0.5), bits=3)
    blob = save_bytes(net)
    fresh = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)).to(torch.bfloat16)
    fresh[1].register_buffer("flags", torch.zeros(3, dtype=torch.bool))
    fresh[1].register_buffer("counts", torch.zeros(6, dtype=torch.int8))
    load_compressed(fresh, blob)
    assert_loaded_equal(net, fresh, torch.randn(3, 8).to(torch.bfloat16))


def test_codebook_float16_is_exact_for_float16_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32))
    register_weight_sharing(level_prune(net[0], amount=0.8), bits=4)
    full = len(save_bytes(net))
    lossy = save_bytes(net, codebook_dtype=torch.float16)
    assert len(lossy) == full - 16 * 2  # 16 centroids, 2 bytes each saved
    fresh = load_compressed(nn.Sequential(nn.Linear(64, 32)), lossy)
    codebook = net[0].parametrizations.weight.original
    assert torch.equal(fresh[0].parametrizations.weight.original, codebook.half().float())
    with torch.no_grad():
        codebook.copy_(codebook.half().float())  # a model with float16-exact codebooks
    fresh = load_compressed(
        nn.Sequential(nn.Linear(64, 32)), save_bytes(net, codebook_dtype=torch.float16)
    )
    assert_loaded_equal(net, fresh, torch.randn(3, 64))


def test_load_into_a_model_compressed_otherwise():
    saved = small_compressed()
    other = small_model(seed=3)
    register_weight_sharing(other[2], bits=1)  # shared there, only pruned in the file
    level_prune(other[0], amount=0.2)
    load_compressed(other, save_bytes(saved))
    assert_loaded_equal(saved, other, torch.randn(4, 6))


def test_paths_file_objects_and_trained_codebooks(tmp_path):
    saved = small_compressed()
    path = tmp_path / "m.tpsc"
    assert save_compressed(saved, path) == path.stat().st_size
    with open(path, "rb") as f:
        fresh = load_compressed(small_model(1), f)
    assert_loaded_equal(saved, fresh, torch.randn(4, 6))
    assert compression_report(str(path)).rows == compression_report(saved).rows
    # The codebook trains with the Deep Compression rule after loading.
    codebook = fresh[0].parametrizations.weight.original
    fresh.train()
    fresh(torch.randn(4, 6)).sum().backward()
    assert codebook.grad is not None and codebook.grad.shape == codebook.shape


# -- the report -------------------------------------------------------------------------
def _record_size(model: nn.Module, name: str, **kwargs) -> int:
    rows = {r["tensor"]: r for r in compression_report(model, **kwargs).rows}
    return rows[name]["PQH"]


def test_report_columns_are_exact_sizes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(200, 50), nn.Linear(50, 20), nn.Linear(20, 5))
    register_weight_sharing(level_prune(net[0], amount=0.9), bits=5)
    level_prune(net[1], amount=0.7)
    register_weight_sharing(net[2], bits=2, granularity="per_channel")
    blob = save_bytes(net)
    report = compression_report(blob)
    assert report.file_bytes == len(blob)
    assert report.overhead == ff.PREAMBLE.size + 1  # preamble + one-byte record count
    assert len(blob) == sum(r["PQH"] for r in report.rows) + report.overhead
    assert report.totals()["PQH"] == len(blob) - report.overhead
    rows = {r["tensor"]: r for r in report.rows}
    for r in report.rows:
        assert r["PQH"] <= r["PQ"]
        assert r["dense"] == r["weights"] * 4
        assert r["ratio"] == pytest.approx(r["dense"] / r["PQH"])
    for name in ("0.bias", "1.bias", "2.bias"):
        assert (
            rows[name]["P"]
            == rows[name]["PQ"]
            == rows[name]["PQH"]
            == 4 * rows[name]["weights"] + len(name) + 5
        )
    assert rows["1.weight"]["P"] == rows["1.weight"]["PQ"]
    assert rows["0.weight"]["density"] == pytest.approx(0.1)
    assert (rows["0.weight"]["bits"], rows["2.weight"]["bits"], rows["1.weight"]["bits"]) == (
        5,
        2,
        None,
    )
    assert rows["2.weight"]["index_bits"] is None  # dense: no positions
    # P+Q: exactly the record in a file without Huffman coding (index bits chosen for it).
    for name in ("0.weight", "1.weight"):
        assert rows[name]["PQ"] == _record_size(net, name, huffman=False, index_bits=None)
    assert rows["0.weight"]["PQH"] < rows["0.weight"]["PQ"]  # Huffman-friendly: 10 % dense
    # P: exactly the record of the same tensor pruned only (no Huffman).
    pruned = nn.Sequential(nn.Linear(200, 50))
    with torch.no_grad():
        pruned[0].weight.copy_(net[0].weight)
    level_prune(pruned[0], amount=0.9)
    assert torch.equal(pruned[0].weight, net[0].weight)
    assert rows["0.weight"]["P"] == _record_size(pruned, "0.weight", huffman=False, index_bits=None)
    assert rows["0.weight"]["P"] > 2 * rows["0.weight"]["PQ"]
    plain = compression_report(net, huffman=False)
    assert all(r["PQH"] == r["PQ"] for r in plain.rows)


def test_report_outputs(tmp_path):
    report = compression_report(small_compressed())
    table = report.to_table()
    assert str(report) == table
    assert table.splitlines()[0].split() == [
        *("tensor", "weights", "density", "bits", "idx", "bits", "dense", "B", "P", "B"),
        *("P+Q", "B", "P+Q+H", "B", "ratio"),
    ]
    assert f"file: {report.file_bytes} bytes" in table and "total" in table
    report.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert (
        tuple(rows[0])
        == report.COLUMNS
        == (
            *("tensor", "weights", "density", "bits", "index_bits"),
            *("dense", "P", "PQ", "PQH", "ratio"),
        )
    )
    assert len(rows) == len(report.rows) + 2 and rows[-1][0] == "total"
    assert [int(r[8]) for r in rows[1:-1]] == [r["PQH"] for r in report.rows]
    assert int(rows[-1][8]) == report.file_bytes - report.overhead
    md = report.to_markdown(tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == md
    lines = md.splitlines()
    assert lines[0].startswith("| tensor | weights") and "P+Q+H B" in lines[0]
    assert lines[1] == "|" + "---|" * 10
    assert len(lines) == 2 + len(report.rows) + 1 + 2
    assert all(line.count("|") == 11 for line in lines[: 3 + len(report.rows)])


# -- bad input ----------------------------------------------------------------------------
@pytest.fixture
def model_and_blob():
    return small_model(seed=5), save_bytes(small_compressed())


def test_truncated_at_every_length(model_and_blob):
    model, blob = model_and_blob
    for n in range(len(blob)):
        assert_rejected(model, blob[:n])
        with pytest.raises(CompressedFileError):
            compression_report(blob[:n])
        if n >= ff.PREAMBLE.size:  # the same with a preamble that agrees: the parser sees it
            assert_rejected(model, reseal(blob[:n]))
            with pytest.raises(CompressedFileError):
                compression_report(reseal(blob[:n]))
    assert "truncated" in assert_rejected(model, blob[:10])
    assert "truncated" in assert_rejected(model, blob[:-1])
    assert "truncated" in assert_rejected(model, reseal(blob[:-1]))


def test_flipped_bytes(model_and_blob):
    model, blob = model_and_blob
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x5A
        message = assert_rejected(model, bytes(bad))
        if i >= ff.PREAMBLE.size or 16 <= i < 20:
            assert "checksum mismatch" in message


def test_preamble_errors(model_and_blob):
    model, blob = model_and_blob
    payload = blob[ff.PREAMBLE.size :]
    assert_rejected(model, seal(payload, version=2), "unsupported format version 2")
    assert_rejected(model, seal(payload, magic=b"PK\x03\x04"), "not a torchprune_share file")
    assert_rejected(model, seal(payload, flags=1), "unknown flags")
    assert_rejected(model, blob + b"\x00", "payload is")
    assert_rejected(model, b"", "file truncated")
    assert_rejected(model, reseal(blob + b"\x00"), "1 bytes after the last record")
    assert_rejected(model, torch_save_bytes(model), "not a torchprune_share file")


def torch_save_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def test_other_architectures():
    blob = save_bytes(small_compressed())
    bigger = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3), nn.Linear(3, 2))
    assert_rejected(bigger, blob, "lacks tensors", "3.weight", "3.bias")
    smaller = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5))
    assert_rejected(smaller, blob, "tensor '2.bias'", "no such tensor")
    wider = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 4))
    assert_rejected(wider, blob, "tensor '2.bias'", "shape (3,)", "(4,)")
    longer = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(6, 3))
    assert_rejected(longer, blob, "tensor '2.weight'", "shape (3, 5)", "(3, 6)")
    conv = nn.Sequential(nn.Conv2d(6, 5, 1), nn.BatchNorm1d(5), nn.Linear(5, 3))
    assert_rejected(conv, blob, "tensor '0.weight'", "does not match")
    no_bn = nn.Sequential(nn.Linear(6, 5), nn.Identity(), nn.Linear(5, 3))
    assert_rejected(no_bn, blob, "tensor '1.weight'", "no such tensor")
    no_stats = nn.Sequential(
        nn.Linear(6, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)
    )
    assert_rejected(no_stats, blob, "tensor '1.running_mean'", "no such tensor")


def test_model_already_compressed_is_left_alone():
    model = small_model(seed=2)
    register_weight_sharing(level_prune(model[2], amount=0.5), bits=2)
    level_prune(model[0], amount=0.3)
    plain = save_bytes(small_model(seed=4))
    # The file stores 2.weight plain; the model shares it.
    assert_rejected(model, plain, "tensor '0.weight'", "stored plain")
    assert_rejected(model, plain[:-3])


# Hand-built records (the writer's own helpers, then tampered with).
def rec(name, kind, dtype, shape, body: bytes) -> bytes:
    return writer.record_header(name, kind, dtype, shape) + body


def packed(symbols, width, count=None, nbytes=None) -> bytes:
    data = pack_bits(np.asarray(symbols, dtype=np.int64), width) if len(symbols) else b""
    if nbytes is not None:
        data = (data + bytes(nbytes))[:nbytes]
    return writer.stream_bytes(ff.PACKED, len(symbols) if count is None else count, data)


def linear_file(weight: bytes, *, bias: bytes | None = None, extra: list[bytes] = ()) -> bytes:
    bias = bias if bias is not None else rec("bias", ff.RAW, torch.float32, (2,), bytes(8))
    records = [bias, weight, *extra]  # the weight last: its truncations stay its own
    return seal(encode_varint(len(records)) + b"".join(records))


def pruned_body(n_kept, bits, symbols, values=None, *, count=None, nbytes=None) -> bytes:
    values = bytes(4 * n_kept) if values is None else values
    return encode_varint(n_kept) + bytes([bits]) + packed(symbols, bits, count, nbytes) + values


def shared_body(
    k,
    codes,
    *,
    n_kept=None,
    positions=b"",
    bits=2,
    index_dtype=8,
    cb=None,
    axis=0,
    gran=0,
    code_width=None,
    init=0,
    method=0,
):
    n_kept = len(codes) if n_kept is None else n_kept
    cb = bytes(4 * k) if cb is None else cb
    settings = bytes([bits, gran]) + encode_varint(axis) + bytes([init, method]) + encode_varint(k)
    width = code_width or max(1, (k - 1).bit_length())
    body = settings + bytes([0, index_dtype]) + cb + encode_varint(n_kept) + positions
    return body + packed(codes, width)


def test_hand_built_file_is_valid():
    """The builders above produce a loadable file (so the tampered ones fail for cause)."""
    good = linear_file(rec("weight", ff.PRUNED, torch.float32, (2, 3), pruned_body(2, 2, [1, 2])))
    lin = nn.Linear(3, 2)
    load_compressed(lin, good)
    assert lin.parametrizations.weight[0].mask.reshape(-1).tolist() == [0, 1, 0, 0, 1, 0]
    shared = shared_body(3, [0, 2, 1], n_kept=3, positions=bytes([2]) + packed([0, 1, 0], 2))
    lin = nn.Linear(3, 2)
    load_compressed(lin, linear_file(rec("weight", ff.SHARED, torch.float32, (2, 3), shared)))
    assert lin.parametrizations.weight[0].index.reshape(-1).tolist() == [0, 3, 2, 1, 3, 3]
    int16 = shared_body(
        3, [0, 2, 1], n_kept=3, positions=bytes([2]) + packed([0, 1, 0], 2), index_dtype=6
    )
    lin = nn.Linear(3, 2)
    load_compressed(lin, linear_file(rec("weight", ff.SHARED, torch.float32, (2, 3), int16)))
    assert lin.parametrizations.weight[0].index.reshape(-1).tolist() == [0, 3, 2, 1, 3, 3]


W = (2, 3)  # nn.Linear(3, 2).weight


@pytest.mark.parametrize(
    ("weight", "fragments"),
    [
        # positions: past the end (1 + 3 + 2 skips), trailing filler, wrong count
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 2, [1, 2, 2])),
            ["tensor 'weight'", "index stream marks 3"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 3, [1, 4])),
            ["tensor 'weight'", "decodes past the tensor's end"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(1, 1, [0, 1])),
            ["tensor 'weight'", "ends with a filler"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 2, [1])),
            ["index stream marks 1 entries, header says 2"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 2, [1, 2], count=7)),
            ["index stream symbol count 7 exceeds the possible 6"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 2, [1, 2], nbytes=2)),
            ["2 bytes for 2 packed 2-bit symbols"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 0, [])),
            ["index bits 0 not in [1, 16]"],
        ),
        (rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 17, [])), ["index bits 17"]),
        (
            rec("weight", ff.PRUNED, torch.float32, W, encode_varint(7)),
            ["kept entry count 7 exceeds the possible 6"],
        ),
        (
            rec("weight", ff.PRUNED, torch.int32, W, encode_varint(6) + bytes(24)),
            ["pruned tensor must be floating point"],
        ),
        (
            rec("weight", ff.PRUNED, torch.float32, W, pruned_body(2, 2, [1, 2], bytes(7))),
            ["truncated", "kept values"],
        ),
        # shared: codes out of range, sizes, dtypes, settings
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(3, [0, 1, 2, 3, 0, 1])),
            ["tensor 'weight'", "code 3 out of range for 3 centroids"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(5, [0] * 6)),
            ["centroid count 5 exceeds the possible 4"],
        ),
        (rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 5)), ["index bits 0"]),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(0, [], n_kept=6)),
            ["kept entries but an empty codebook"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, index_dtype=0)),
            ["invalid codebook dtype", "index dtype torch.float32"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, bits=0)),
            ["bits must be an int in [1, 16], got 0"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, bits=17)),
            ["bits must be an int in [1, 16], got 17"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, init=5)),
            ["tensor 'weight'", "init code must be one of [0, 1, 2, 3, 4], got 5"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, method=3)),
            ["method code must be one of [0, 1, 2], got 3"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, gran=2)),
            ["granularity code must be one of [0, 1], got 2"],
        ),
        (
            rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, gran=1, axis=4)),
            ["channel_axis must be in [-2, 1] for a 2-D tensor, got 2"],
        ),
        (
            rec("weight", ff.SHARED, torch.int64, W, shared_body(4, [0] * 6)),
            ["shared tensor must be floating point"],
        ),
        (rec("weight", ff.SHARED, torch.float32, W, shared_body(4, [0] * 6, cb=bytes(15))), []),
        # records: kind, dtype, name, shape, raw data
        (rec("weight", 3, torch.float32, W, b""), ["invalid record kind code 3"]),
        (
            rec("weight", ff.RAW, torch.float32, W, bytes(23)),
            ["truncated: tensor data needs 24 bytes"],
        ),
        (b"\x02\xff\xfe", ["tensor name is not UTF-8"]),
        (
            rec("weight", ff.RAW, torch.float32, (2, 3, 1), bytes(24)),
            ["shape (2, 3, 1) does not match the model's (2, 3)"],
        ),
        (rec("weight", ff.RAW, torch.float32, (2**47, 2**47), b""), ["impossibly large"]),
        (rec("weight", ff.RAW, torch.float32, (2**60,), b""), ["impossibly large"]),
        (
            encode_varint(6) + b"weight\x00" + bytes([len(ff.DTYPES)]) + b"\x00",
            ["invalid dtype code 10"],
        ),
        (b"\x80" * 10, ["name length: varint longer than 9 bytes"]),
    ],
)
def test_malformed_records(weight, fragments):
    assert_rejected(nn.Linear(3, 2), linear_file(weight), *fragments)
    if "does not match" not in " ".join(fragments):  # a valid file, for another model
        with pytest.raises(CompressedFileError):
            compression_report(linear_file(weight))


def test_malformed_files():
    lin = nn.Linear(3, 2)
    w = rec("weight", ff.RAW, torch.float32, W, bytes(24))
    assert_rejected(lin, linear_file(w, extra=[w]), "tensor 'weight': stored twice")
    flags = rec("flags", ff.RAW, torch.bool, (2,), b"\x01\x02")
    lin.register_buffer("flags", torch.zeros(2, dtype=torch.bool))
    assert_rejected(lin, linear_file(w, extra=[flags]), "tensor 'flags'", "other than 0 or 1")
    bias = rec("bias", ff.PRUNED, torch.float32, (2,), encode_varint(2) + bytes(8))
    bn = nn.BatchNorm1d(2)
    blob = save_bytes(bn)
    assert_rejected(bn, blob.replace(b"\x0crunning_mean\x00", b"\x0crunning_mean\x01"))
    sealed = reseal(
        blob.replace(b"\x0crunning_mean\x00\x00\x01\x02", b"\x0crunning_mean\x01\x00\x01\x02\x02")
    )
    assert_rejected(bn, sealed, "tensor 'running_mean'", "no float parameter")
    load_compressed(nn.Linear(3, 2), linear_file(w, bias=bias))  # a pruned bias is fine
    # Index dtype too small for the zero code 256 (pruned entries of 256 centroids).
    cb = bytes(4 * 256)
    body = shared_body(
        256, [255], n_kept=1, positions=bytes([3]) + packed([0], 3), bits=8, cb=cb, index_dtype=8
    )
    assert_rejected(
        nn.Linear(3, 2),
        linear_file(rec("weight", ff.SHARED, torch.float32, W, body)),
        "cannot hold code 256",
    )
    # A Huffman stream that decodes to the wrong count, or is empty.
    huff = writer.stream_bytes(ff.HUFFMAN, 2, encode(np.array([1, 2, 0])))
    body = encode_varint(2) + bytes([2]) + huff + bytes(8)
    lin = nn.Linear(3, 2)
    assert_rejected(
        lin, linear_file(rec("weight", ff.PRUNED, torch.float32, W, body)), "decodes to 3 symbols"
    )
    empty = writer.stream_bytes(ff.HUFFMAN, 0, encode(np.array([], dtype=np.int64)))
    body = encode_varint(0) + bytes([2]) + empty
    assert_rejected(
        lin, linear_file(rec("weight", ff.PRUNED, torch.float32, W, body)), "empty Huffman stream"
    )
    corrupt = bytearray(encode(np.array([1, 2, 1, 1])))
    corrupt[-1] ^= 0x40
    body = (
        encode_varint(2)
        + bytes([2])
        + writer.stream_bytes(ff.HUFFMAN, 4, bytes(corrupt))
        + bytes(8)
    )
    assert_rejected(
        lin,
        linear_file(rec("weight", ff.PRUNED, torch.float32, W, body)),
        "tensor 'weight'",
        "index stream",
    )


def _fails_fast(blob: bytes, model: nn.Module | None = None) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CompressedFileError):
            if model is None:
                compression_report(blob)
            else:
                load_compressed(model, blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 16 << 20, peak


def test_huge_claims_fail_fast_without_allocating():
    big = 2**40
    cases = [
        seal(encode_varint(2**62)),  # record count
        seal(b"\x01" + encode_varint(2**62) + b"x"),  # name length
        linear_file(rec("weight", ff.RAW, torch.float32, (big,), bytes(64))),  # raw shape
        linear_file(
            rec(
                "weight",
                ff.PRUNED,
                torch.float32,
                (big, 8),
                encode_varint(big) + bytes([16]) + writer.stream_bytes(ff.PACKED, big, bytes(64)),
            )
        ),
        linear_file(
            rec(
                "weight",
                ff.PRUNED,
                torch.float32,
                (big,),
                encode_varint(1) + bytes([16]) + writer.stream_bytes(ff.PACKED, 2**50, bytes(64)),
            )
        ),
        linear_file(
            rec(
                "weight",
                ff.SHARED,
                torch.float32,
                (big, 4),
                shared_body(2**16, [], n_kept=0, bits=16, gran=1, cb=b""),
            )
        ),
        linear_file(
            rec(
                "weight",
                ff.SHARED,
                torch.float32,
                (big,),
                shared_body(4, [], n_kept=big, bits=2) + bytes(8),
            )
        ),
    ]
    # A Huffman stream whose own header claims 2**40 symbols.
    huff = bytearray(encode(np.array([0, 1, 1, 2])))
    huff[7:8] = encode_varint(big)
    huff[3:7] = zlib.crc32(bytes(huff[7:])).to_bytes(4, "little")
    body = (
        encode_varint(4) + bytes([4]) + writer.stream_bytes(ff.HUFFMAN, 4, bytes(huff)) + bytes(16)
    )
    cases.append(linear_file(rec("weight", ff.PRUNED, torch.float32, (big,), body)))
    for blob in cases:
        _fails_fast(blob)
        _fails_fast(blob, nn.Linear(3, 2))


# -- fuzzing ----------------------------------------------------------------------------
def fuzz_model() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(24, 12), nn.BatchNorm1d(12), nn.Linear(12, 80))
    net[0].register_buffer("flags", torch.zeros(3, dtype=torch.bool))
    return net


def _fuzz_base(huffman: bool) -> bytes:
    """Every kind of record and stream, Huffman-coded ones included, in under 2 kB."""
    torch.manual_seed(0)
    net = fuzz_model()
    net.train()
    net(torch.randn(4, 24))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # mostly one value: a skewed code stream
        often = torch.rand(12, 24, generator=gen) < 0.75
        net[0].weight.copy_(torch.where(often, 0.5, torch.randn(12, 24, generator=gen)))
    register_weight_sharing(level_prune(net[0], amount=0.2), bits=3)
    level_prune(net[1], "weight", amount=0.5)
    mask = (torch.arange(960) % 8 < 2) | (torch.rand(960, generator=gen) < 0.05)  # skewed gaps
    parametrize.register_parametrization(net[2], "weight", PruningMask(mask.reshape(80, 12)))
    register_weight_sharing(net[2], bits=1, granularity="per_channel")
    return save_bytes(net, huffman=huffman)


FUZZ_BASES = [_fuzz_base(True), _fuzz_base(False)]


def check_decoder(blob: bytes) -> None:
    """Load and report ``blob``: a valid model or CompressedFileError, model untouched."""
    start = time.perf_counter()
    target = fuzz_model()
    level_prune(target[2], amount=0.25)  # a reparametrization the loader must not touch
    before = snapshot(target)
    try:
        load_compressed(target, blob)
    except CompressedFileError:
        assert snapshot(target) == before
    else:
        kinds = {type(p) for *_, p in compressed_tensors(target)}
        assert kinds <= {PruningMask, WeightSharing}
        target.eval()
        with torch.no_grad():
            assert target(torch.randn(2, 24)).shape == (2, 80)
    try:
        report = compression_report(blob)
    except CompressedFileError:
        pass
    else:
        assert (
            report.file_bytes == len(blob) == sum(r["PQH"] for r in report.rows) + report.overhead
        )
    assert time.perf_counter() - start < 10


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    check_decoder(data)
    check_decoder(seal(data))  # a valid preamble: the payload parser sees the bytes
    check_decoder(seal(FUZZ_BASES[1][ff.PREAMBLE.size : ff.PREAMBLE.size + 20] + data))


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])),
)


def mutate(blob: bytes, ops: list[tuple]) -> bytes:
    data = bytearray(blob)
    for op, where, *arg in ops:
        i = where % (len(data) + 1)
        if op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = arg[0]
        elif op == "delete":
            del data[i : i + arg[0]]
        elif i < len(data):
            data[i] = data[i] ^ arg[0] if op == "flip" else arg[0]
    return bytes(data)


@FUZZ
@given(
    base=st.sampled_from([0, 1]),
    ops=st.lists(mutation, min_size=1, max_size=4),
    fix_crc=st.booleans(),
)
def test_fuzz_mutations(base, ops, fix_crc):
    blob = mutate(FUZZ_BASES[base], ops)
    check_decoder(reseal(blob) if fix_crc else blob)


@FUZZ
@given(base=st.sampled_from([0, 1]), ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_payload_mutations_with_crc_fixed(base, ops):
    """Mutations of the payload only, with a preamble that agrees: all reach the parser."""
    head, payload = FUZZ_BASES[base][: ff.PREAMBLE.size], FUZZ_BASES[base][ff.PREAMBLE.size :]
    check_decoder(reseal(head + mutate(payload, ops)))


def huffman_spans(blob: bytes) -> list[tuple[int, int]]:
    """(start, length) of every Huffman stream in a file."""
    spans, start = [], blob.find(b"HF\x01")
    while start >= 0:
        i = start - 1  # the stream's byte length is the varint just before its data
        while blob[i - 1] >= 0x80:
            i -= 1
        length = sum((b & 0x7F) << (7 * j) for j, b in enumerate(blob[i:start]))
        spans.append((start, length))
        start = blob.find(b"HF\x01", start + length)
    return spans


def test_fuzz_bases_are_valid():
    for blob in FUZZ_BASES:
        saved = fuzz_model()
        load_compressed(saved, blob)
        assert len(compressed_tensors(saved)) == 3
    records, _ = reader.parse(FUZZ_BASES[0])
    codings = [len(huffman_spans(FUZZ_BASES[0])), len(huffman_spans(FUZZ_BASES[1]))]
    assert codings == [2, 0]  # Huffman: a code stream and an index stream
    assert sum(s.size < s.packed_size for r in records for s in r.streams) == 2


@FUZZ
@given(
    which=st.integers(0, 1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_fuzz_inside_huffman_streams(which, edits):
    """Edits of a Huffman stream with its own CRC and the file's fixed: the codec decodes."""
    start, length = huffman_spans(FUZZ_BASES[0])[which]
    blob = bytearray(FUZZ_BASES[0])
    for where, value in edits:
        blob[start + 7 + where % (length - 7)] = value
    blob[start + 3 : start + 7] = zlib.crc32(blob[start + 7 : start + length]).to_bytes(4, "little")
    check_decoder(reseal(bytes(blob)))


# -- no code execution --------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (exec, ("import builtins; builtins._tps_pwned = True",))


def test_loading_never_unpickles(monkeypatch):
    saved = small_compressed()
    blob = save_bytes(saved)

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader must not unpickle")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    fresh = load_compressed(small_model(1), blob)
    assert_loaded_equal(saved, fresh, torch.randn(4, 6))
    compression_report(blob)


def test_pickle_payloads_do_not_run():
    exploit = pickle.dumps(_Exploit())
    assert not hasattr(builtins, "_tps_pwned")
    # As a payload, as a file of its own, and as the bytes of a tensor that loads fine.
    model = small_model()
    assert_rejected(model, seal(exploit))
    assert_rejected(model, exploit)
    buf = io.BytesIO()
    torch.save({"x": _Exploit()}, buf)
    assert_rejected(model, buf.getvalue(), "not a torchprune_share file")
    holder = nn.Module()
    holder.register_buffer("blob", torch.frombuffer(bytearray(exploit), dtype=torch.uint8))
    fresh = nn.Module()
    fresh.register_buffer("blob", torch.zeros(len(exploit), dtype=torch.uint8))
    load_compressed(fresh, save_bytes(holder))
    assert bytes(fresh.blob.numpy()) == exploit
    assert not hasattr(builtins, "_tps_pwned")


# -- saving: what cannot be stored ------------------------------------------------------
def test_save_refuses_what_it_cannot_restore():
    hooked = nn.Linear(4, 4)
    prune.l1_unstructured(hooked, "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"torch\.nn\.utils\.prune hook"):
        save_compressed(hooked, io.BytesIO())
    level_prune(hooked, amount=0)  # adopts the torch mask
    fresh = load_compressed(nn.Linear(4, 4), save_bytes(hooked))
    assert torch.equal(fresh.weight, hooked.weight)
    foreign = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="parametrization other than"):
        save_compressed(foreign, io.BytesIO())
    with pytest.raises(ValueError, match="index_bits"):
        save_compressed(nn.Linear(2, 2), io.BytesIO(), index_bits=17)
    with pytest.raises(TypeError, match="index_bits"):
        save_compressed(nn.Linear(2, 2), io.BytesIO(), index_bits=True)
    with pytest.raises(ValueError, match="codebook_dtype"):
        save_compressed(nn.Linear(2, 2), io.BytesIO(), codebook_dtype=torch.bfloat16)
    broken = register_weight_sharing(nn.Linear(4, 4), bits=1)
    broken.parametrizations.weight[0].index[0, 0] = 7  # a code past the 2 centroids
    with pytest.raises(ValueError, match="inconsistent weight sharing"):
        save_compressed(broken, io.BytesIO())
    complex_buffer = nn.Linear(2, 2)
    complex_buffer.register_buffer("z", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="'z'"):
        save_compressed(complex_buffer, io.BytesIO())


# -- acceptance: LeNet-300-100 on digits ----------------------------------------------------
def _lenet_pipeline(densities: dict[str, float], *, fp16_codebooks: bool) -> dict:
    from torchprune_share.data import load_digits, make_loaders
    from torchprune_share.models import LeNet300100
    from torchprune_share.training import evaluate, train

    torch.manual_seed(0)
    train_loader, _, test_loader = make_loaders(load_digits(seed=0), seed=0)
    model = LeNet300100(8)
    train(model, train_loader, epochs=20, lr=0.05, progress=False)
    dense_bytes = len(torch_save_bytes(model))
    acc = {"dense": evaluate(model, test_loader)[0]}
    for step in (0.5, 0.75, 1.0):  # iterative pruning with retraining, as in the paper
        for name, density in densities.items():
            module = getattr(model, name)
            target = round((1 - density) * module.weight.numel() * step)
            level_prune(module, amount=max(0, target - int((module.weight == 0).sum())))
        train(model, train_loader, epochs=5, lr=0.02, progress=False)
    acc["pruned"] = evaluate(model, test_loader)[0]
    for name in densities:
        register_weight_sharing(getattr(model, name), bits=6)
    train(model, train_loader, epochs=5, lr=0.01, progress=False)
    kwargs = {}
    if fp16_codebooks:  # round the trained codebooks to float16 values: stored exactly
        with torch.no_grad():
            for name in densities:
                codebook = getattr(model, name).parametrizations.weight.original
                codebook.copy_(codebook.half().float())
        kwargs["codebook_dtype"] = torch.float16
    acc["shared"] = evaluate(model, test_loader)[0]
    blob = save_bytes(model, **kwargs)
    fresh = load_compressed(LeNet300100(8), blob)
    assert_loaded_equal(model, fresh, torch.rand(5, 1, 8, 8))
    report = compression_report(blob)
    kept = sum(int((getattr(model, n).weight != 0).sum()) for n in densities)
    total = sum(getattr(model, n).weight.numel() for n in densities)
    return dict(
        report=report,
        file=len(blob),
        dense=dense_bytes,
        ratio=dense_bytes / len(blob),
        density=kept / total,
        accuracy=acc,
    )


@pytest.mark.slow
def test_lenet300_digits_compression(record_property):
    """Issue 5's acceptance run; ``pytest -s`` prints the reports and numbers."""
    uniform = _lenet_pipeline({"fc1": 0.08, "fc2": 0.08, "fc3": 0.08}, fp16_codebooks=False)
    tuned = _lenet_pipeline({"fc1": 0.05, "fc2": 0.05, "fc3": 1.0}, fp16_codebooks=True)
    for label, r in (
        ("uniform 8%, 6 bits", uniform),
        ("fc1/fc2 5%, fc3 dense, 6 bits, fp16 codebooks", tuned),
    ):
        print(f"\nLeNet-300-100 on digits, {label}:\n{r['report'].to_table()}")
        print(
            f"weights density {r['density']:.2%}; file {r['file']} B; torch.save of the fp32 "
            f"state_dict {r['dense']} B; ratio {r['ratio']:.1f}x; accuracy {r['accuracy']}"
        )
    for label, r in (("uniform", uniform), ("tuned", tuned)):
        record_property(f"{label}_ratio", round(r["ratio"], 2))
        record_property(f"{label}_file_bytes", r["file"])
    for r in (uniform, tuned):
        rows = {row["tensor"]: row for row in r["report"].rows}
        for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
            row = rows[name]
            assert row["bits"] == 6 and row["PQH"] <= row["PQ"]
        for name in ("fc1.weight", "fc2.weight"):
            assert rows[name]["PQ"] < rows[name]["P"] < rows[name]["dense"]
        assert r["report"].file_bytes == r["file"]
        assert r["accuracy"]["shared"] > 90
    assert uniform["density"] == pytest.approx(0.08, abs=0.001)
    # Biases (1.6 kB) and codebooks (0.8 kB) are a third of an ~8 kB file: at a uniform
    # 8 % the file is ~26x smaller (30x needs ~6 % uniform, or fc3 dense and fc1/fc2 ~5 %).
    assert uniform["ratio"] > 24
    assert tuned["ratio"] >= 30
    assert tuned["density"] < 0.075
    assert sum(r["PQH"] for r in tuned["report"].rows) + tuned["report"].overhead == tuned["file"]


def test_preamble_layout():
    blob = save_bytes(small_compressed())
    magic, version, flags, length, crc = struct.unpack_from("<4sHHQI", blob)
    assert (magic, version, flags) == (b"TPSC", 1, 0)
    assert length == len(blob) - 20 and crc == zlib.crc32(blob[20:])
    assert blob[20] == 9  # the record count: 0.bias, 0.weight, five of 1., 2.bias, 2.weight


def test_no_underscore_name_is_imported_across_the_file_format_and_codec_modules():
    """fileformat/ and codec/ import only public names (the core's own test is in
    test_compat.py); the settings, names and tensor states come from their owners."""
    import ast
    import pathlib

    import torchprune_share

    root = pathlib.Path(torchprune_share.__file__).parent
    files = sorted([*(root / "fileformat").glob("*.py"), *(root / "codec").glob("*.py")])
    assert {f.stem for f in files} >= {"spec", "writer", "reader", "loader", "wire", "huffman"}
    bad, imported = [], set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                imported |= {(node.module, a.name) for a in node.names}
                bad += [f"{path.stem}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad
    assert {("config", "code_of"), ("config", "value_of"), ("config", "SharingConfig")} <= imported
    assert {("checkpoint", "owned_keys"), ("names", "reparam_base")} <= imported
    assert ("state", "TensorState") in imported
    assert not (root / "fileformat" / "keys.py").exists()
