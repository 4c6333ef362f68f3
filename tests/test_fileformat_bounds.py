"""Readers bound every allocation by the bytes present, whatever a file declares.

A hostile file may declare any count in any varint field. The fuzz test sets each
varint field of a valid file (found by a walker that reads the layout as the format's
docstrings describe it, Huffman stream headers included) to 2**31, 2**40, 2**60 and
2**63 - 1, one at a time, repairs the
checksums and lengths around it (the preamble's, and a Huffman stream's own CRC and
byte length when the varint is inside one) so that the value reaches the parser, and
checks that ``load_compressed`` and ``compression_report`` answer within 1 s and under
100 MB of extra memory: ``CompressedFileError``, or (for the report only) a valid
report of a valid file, which a declared shape such as ``(2**40,)`` with one kept entry
is. The measurement runs in a subprocess, so its peak resident size is its own.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchprune_share import PruningMask, level_prune, register_weight_sharing
from torchprune_share.codec.wire import BoundedReader, encode_varint, zigzag_decode
from torchprune_share.fileformat import (
    NUMPY_DTYPES,
    PREAMBLE,
    PRUNED,
    RAW,
    TORCH_DTYPES,
    CompressedFileError,
    compression_report,
    load_compressed,
)
from torchprune_share.fileformat.writer import encode_model, positions_block, record_header

ROOT = Path(__file__).resolve().parents[1]
VALUES = (2**31, 2**40, 2**60, 2**63 - 1)
MB = 2**20


def bounds_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(24, 12), nn.Linear(12, 80))


def base_files() -> list[bytes]:
    """A Huffman-coded and a packed file: raw, pruned + shared, per-channel records."""
    torch.manual_seed(0)
    net = bounds_model()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # mostly one value: a skewed code stream, Huffman-coded
        often = torch.rand(12, 24, generator=gen) < 0.75
        net[0].weight.copy_(torch.where(often, 0.5, torch.randn(12, 24, generator=gen)))
    register_weight_sharing(level_prune(net[0], amount=0.2), bits=3)
    mask = (torch.arange(960) % 8 < 2) | (torch.rand(960, generator=gen) < 0.05)
    parametrize.register_parametrization(net[1], "weight", PruningMask(mask.reshape(80, 12)))
    register_weight_sharing(net[1], bits=1, granularity="per_channel")
    return [encode_model(net), encode_model(net, huffman=False)]


def reseal(payload: bytes) -> bytes:
    return PREAMBLE.pack(b"TPSC", 1, 0, len(payload), zlib.crc32(payload)) + payload


class _Tracer(BoundedReader):
    """Records where every varint it reads starts and ends, and what it is."""

    def __init__(self, data: bytes, pos: int = 0, base: int = 0) -> None:
        super().__init__(data, pos)
        self.base, self.fields = base, []

    def varint(self, what: str) -> int:
        start = self.pos
        value = super().varint(what)
        self.fields.append((self.base + start, self.pos - start, what))
        return value


def _huffman_fields(data: np.ndarray, base: int) -> list[tuple[int, int, str]]:
    """The varint fields of a Huffman stream, read as its format says (codec.huffman)."""
    rd = _Tracer(data, 7, base)
    n = rd.varint("n")
    if n:
        k, max_len = rd.varint("k"), rd.u8("L")
        pairs = rd.varint("alphabet runs")
        for _ in range(2 * pairs):
            rd.varint("alphabet run")
        if k >= 2:
            w = max(1, (max_len - 1).bit_length())
            if rd.u8("length mode") == 0:
                rd.take((k * w + 7) // 8, "lengths")
            else:
                runs = rd.varint("length runs")
                rd.take((runs * w + 7) // 8, "run values")
                for _ in range(runs):
                    rd.varint("length run")
            chunks = -(-n // (1 << rd.u8("chunk log2")))
            if chunks >= 2:
                rd.varint("chunk base")
                width = rd.u8("chunk width")
                rd.take(((chunks - 1) * width + 7) // 8, "chunk table")
        rd.varint("payload bits")
    return rd.fields


def _stream(rd: _Tracer, streams: list) -> None:
    coding = rd.u8("coding")
    rd.varint("symbol count")
    length = rd.varint("stream bytes")
    data = rd.take(length, "stream")
    if coding == 1:
        streams.append((rd.fields[-1][0], rd.pos - length, length))
        rd.fields += _huffman_fields(data, rd.pos - length)


def _kept(rd: _Tracer, numel: int, streams: list) -> int:
    n_kept = rd.varint("kept count")
    if n_kept < numel:
        rd.u8("index bits")
        _stream(rd, streams)
    return n_kept


def fields(payload: bytes) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, int]]]:
    """Every varint field of a valid payload (offset, length, name) and its Huffman
    streams (offset of the byte-length varint, of the data, data length)."""
    rd, streams = _Tracer(payload), []
    for _ in range(rd.varint("record count")):
        rd.take(rd.varint("name length"), "name")
        kind, dtype = rd.u8("kind"), TORCH_DTYPES[rd.u8("dtype")]
        shape = [rd.varint("shape") for _ in range(rd.u8("ndim"))]
        numel, size = math.prod(shape), NUMPY_DTYPES[dtype].itemsize
        if kind == RAW:
            rd.take(numel * size, "values")
        elif kind == PRUNED:
            rd.take(_kept(rd, numel, streams) * size, "kept values")
        else:
            rd.u8("bits")
            per_channel = rd.u8("granularity") == 1
            axis = zigzag_decode(rd.varint("channel axis" if per_channel else "unused axis"))
            rd.take(2, "init, method")
            k = rd.varint("centroids")
            cb = NUMPY_DTYPES[TORCH_DTYPES[rd.u8("codebook dtype")]].itemsize
            rd.u8("index dtype")
            rd.take((shape[axis] if per_channel else 1) * k * cb, "codebook")
            _kept(rd, numel, streams)
            _stream(rd, streams)
    assert rd.remaining == 0
    return rd.fields, streams


def substituted(payload: bytes, i: int, n: int, value: int) -> bytes:
    """The file with the varint ``payload[i:i+n]`` replaced by ``value``, repaired."""
    new = encode_varint(value)
    for length_at, data_at, length in fields(payload)[1]:
        if data_at + 7 <= i < data_at + length:  # inside a stream: fix its CRC and length
            data = bytearray(payload[data_at : data_at + length])
            j = i - data_at
            data[j : j + n] = new
            data[3:7] = zlib.crc32(data[7:]).to_bytes(4, "little")
            return reseal(
                payload[:length_at]
                + encode_varint(len(data))
                + bytes(data)
                + payload[data_at + length :]
            )
    return reseal(payload[:i] + new + payload[i + n :])


def hostile_files() -> list[tuple[str, bytes]]:
    """(field name, file) for every varint field of the base files and every value."""
    files = []
    for blob in base_files():
        payload = blob[PREAMBLE.size :]
        for i, n, what in fields(payload)[0]:
            files += [(what, substituted(payload, i, n, v)) for v in VALUES]
    return files


def _case(blob: bytes, model: nn.Module) -> dict:
    """Load and report one file; what happened, how long, how much numpy allocated."""
    outcome = {}
    for name, call in (
        ("load", lambda: load_compressed(model, blob)),
        ("report", lambda: compression_report(blob)),
    ):
        tracemalloc.reset_peak()
        start = time.perf_counter()
        try:
            result = call()
        except CompressedFileError:
            outcome[name] = "error"
        else:
            outcome[name] = "ok"
            if name == "report":
                assert result.file_bytes == len(blob)
        outcome[name + "_s"] = time.perf_counter() - start
        outcome[name + "_peak"] = tracemalloc.get_traced_memory()[1]
    return outcome


def measure() -> None:
    """Run every hostile file (in a subprocess); print a JSON summary."""
    files = hostile_files()
    model = bounds_model()
    _case(base_files()[0], bounds_model())  # warm up every code path
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    worst = {"load_s": 0.0, "report_s": 0.0, "load_peak": 0, "report_peak": 0}
    counts: dict[str, int] = {}
    for what, blob in files:
        outcome = _case(blob, model)
        for key in worst:
            worst[key] = max(worst[key], outcome[key])
        for key in ("load", "report"):
            tag = f"{key}_{outcome[key]}" + ("_unused" if what == "unused axis" else "")
            counts[tag] = counts.get(tag, 0) + 1
        if outcome["load"] == "ok":
            model = bounds_model()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    print(json.dumps({"cases": len(files), "rss_kib": rss, **worst, **counts}))


def test_hostile_varints_are_refused_quickly_and_cheaply():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    code = "from tests.test_fileformat_bounds import measure; measure()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["cases"] > 200
    # Every value refused, but a per-tensor record's channel axis, which nothing reads
    # (the writer stores whatever int the module holds there).
    assert r.get("load_ok", 0) == 0 and r.get("report_ok", 0) <= r["cases"] // 10, r
    assert r["load_error"] + r["load_ok_unused"] == r["cases"], r
    assert r["load_s"] < 1 and r["report_s"] < 1, r
    assert r["load_peak"] < 100 * MB and r["report_peak"] < 100 * MB, r
    assert r["rss_kib"] * 1024 < 100 * MB, r


def test_huge_declared_tensor_reports_without_allocating():
    """The issue's 42-byte file: 2**40 entries declared, one kept."""
    record = record_header("w", PRUNED, torch.float32, (2**40,))
    record += encode_varint(1) + positions_block(np.array([5]), False, 8)
    blob = reseal(encode_varint(1) + record + bytes(4))
    assert len(blob) == 42
    tracemalloc.start()
    start = time.perf_counter()
    try:
        report = compression_report(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1 and peak < 10 * MB
    (row,) = report.rows
    assert row["weights"] == 2**40 and row["density"] == 2**-40
    assert row["PQH"] == len(blob) - report.overhead == 21
    assert row["dense"] == 4 * 2**40
    try:
        load_compressed(nn.Linear(2, 2), blob)
    except CompressedFileError as err:
        assert "tensor 'w'" in str(err) and "no such tensor" in str(err)
    else:
        raise AssertionError("loaded a file of another architecture")


def test_substitution_reaches_the_parser():
    """The walker finds the fields; a substitution of the same value gives the file back."""
    files = base_files()
    found = [fields(b[PREAMBLE.size :]) for b in files]
    assert [len(streams) for _, streams in found] == [2, 0]
    names = {what for field_list, _ in found for *_, what in field_list}
    assert {"record count", "shape", "kept count", "centroids", "channel axis"} <= names
    assert {"n", "k", "alphabet run", "payload bits", "stream bytes"} <= names
    for blob, (field_list, _) in zip(files, found):
        payload = blob[PREAMBLE.size :]
        for i, n, _ in field_list:
            value = BoundedReader(payload, i).varint("v")
            assert substituted(payload, i, n, value) == blob
            assert substituted(payload, i, n, value + 1) != blob
