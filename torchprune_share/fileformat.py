"""The compressed model file: sparse relative indices, packed codes, Huffman coding.

A ``.tpsc`` file is a compact encoding of a compressed model's ``state_dict`` that needs
no pickle to read. Its size in bytes is the model's real compressed size.

Byte layout (``varint`` = unsigned LEB128 of at most 9 bytes, so values < 2**63; all
fixed-width integers and tensor bytes little-endian)::

    offset 0   4 B   magic b"TPSC"
           4   u16   format version (1)
           6   u16   flags (0)
           8   u64   payload length P
          16   u32   CRC-32 (zlib) of the payload
          20   P B   payload: varint record count, then the records, nothing after them

    record     varint name length, UTF-8 name (the state_dict key, or for a pruned or
               shared tensor its dense name such as "fc1.weight"; each name once)
               u8 kind: 0 raw, 1 pruned, 2 shared
               u8 dtype (index into DTYPES; for a shared tensor the dense dtype),
               u8 ndim, ndim x varint shape (numel = product <= 2**48)
      raw:     the tensor's bytes (numel x itemsize, C order; bool as bytes 0/1,
               bfloat16 as its 16-bit pattern)
      pruned:  varint n_kept, positions (only if n_kept < numel), then the n_kept kept
               values (dtype bytes, C order)
      shared:  u8 bits (1..16), u8 granularity (0 per_tensor, 1 per_channel),
               zigzag-varint channel_axis, u8 init, u8 method (indices into INITS,
               METHODS), varint k (centroids per codebook, <= 2**bits),
               u8 codebook dtype (floating), u8 index dtype (integer; holds code k, the
               pruned zero, when n_kept < numel),
               codebook bytes (rows x k, rows = shape[channel_axis] or 1),
               varint n_kept, positions (only if n_kept < numel), codes
    positions  u8 index_bits b (1..16), stream of relative indices of the kept entries
               in C order: a symbol s < 2**b - 1 skips s entries and marks the next one
               kept; s = 2**b - 1 is a filler that skips 2**b - 1 entries and marks
               nothing (Deep Compression's relative index, with its filler zero as a
               code of its own). The stream ends with a kept entry, before numel.
    codes      stream of the kept entries' codes in C order, each < k (per channel: into
               that channel's codebook); width max(1, bit_length(k - 1))
    stream     u8 coding (0 packed, 1 Huffman), varint symbol count, varint byte length,
               then the bytes: fixed-width packing at the stream's width
               (:func:`torchprune_share.codec.pack_bits`, exactly ceil(count x width / 8)
               bytes) or a canonical Huffman stream (:func:`torchprune_share.codec.encode`,
               never for an empty stream). The writer takes whichever is smaller when
               Huffman coding is on, and unless told chooses each tensor's index_bits
               as the width of the smallest positions block (the narrowest on a tie).

A pruned tensor's pruned entries are not stored: after loading they are zero in the
parametrization's ``original`` (the tensor itself is bitwise the same). Loading never
executes code; every malformed input raises :class:`CompressedFileError` naming the
problem and the tensor, and leaves the model untouched.
"""

from __future__ import annotations

import csv
import io
import math
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import codec
from .checkpoint import (
    CheckpointError,
    compressed_tensors,
    load_state_dict,
    torch_pruned_tensors,
)
from .checkpoint import bake as bake_model
from .parametrizations import GRANULARITIES, PruningMask, WeightSharing

__all__ = [
    "CompressedFileError",
    "CompressionReport",
    "compression_report",
    "load_compressed",
    "save_compressed",
]

MAGIC = b"TPSC"
VERSION = 1
PREAMBLE = struct.Struct("<4sHHQI")  # magic, version, flags, payload length, crc32
RAW, PRUNED, SHARED = 0, 1, 2
PACKED, HUFFMAN = 0, 1
MAX_BITS = 16  # sharing bits and index bits
MAX_NUMEL = 1 << 48  # refuse shapes no machine could hold before doing any arithmetic
_REPARAM_KEY = re.compile(r"^(?:.*\.)?parametrizations\.[^.]+\.")

# The position of an entry in these tables is its code in the file: append, never reorder.
DTYPES: tuple[tuple[torch.dtype, str], ...] = (
    (torch.float32, "<f4"),
    (torch.float16, "<f2"),
    (torch.bfloat16, "<i2"),  # stored as its bit pattern
    (torch.float64, "<f8"),
    (torch.int64, "<i8"),
    (torch.int32, "<i4"),
    (torch.int16, "<i2"),
    (torch.int8, "<i1"),
    (torch.uint8, "<u1"),
    (torch.bool, "<u1"),
)
TORCH_DTYPES = tuple(t for t, _ in DTYPES)
NUMPY_DTYPES = {t: np.dtype(n) for t, n in DTYPES}
INDEX_DTYPES = tuple(t for t in TORCH_DTYPES if not t.is_floating_point and t != torch.bool)
# Stored as their position in these tuples: a file's byte codes, so append only (kept
# apart from kmeans.INITS / METHODS on purpose).
INITS = ("linear", "density", "random", "kmeans++")
METHODS = ("lloyd", "optimal", "sklearn")


class CompressedFileError(ValueError):
    """A compressed model file is malformed, corrupt, or does not fit the model.

    Example:
        >>> try:
        ...     compression_report(b"not a model file")
        ... except CompressedFileError as err:
        ...     print(err)
        file truncated: 16 bytes, the preamble alone is 20
    """


# -- writing ----------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().astype(NUMPY_DTYPES[t.dtype], copy=False).tobytes()


def _gap_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    """Relative-index symbols (fillers included) of sorted kept positions."""
    cap = (1 << bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // cap
    symbols = np.full(len(gaps) + int(fillers.sum()), cap, dtype=np.int64)
    symbols[np.cumsum(fillers + 1) - 1] = gaps - fillers * cap  # each after its fillers
    return symbols


def _stream_bytes(coding: int, count: int, data: bytes) -> bytes:
    return bytes([coding]) + _varint(count) + _varint(len(data)) + data


def _packed_stream_size(count: int, width: int) -> int:
    return len(_stream_bytes(PACKED, count, bytes(codec.packed_nbytes(count, width))))


def _stream(symbols: np.ndarray, width: int, huffman: bool) -> bytes:
    data, coding = codec.pack_bits(symbols, width), PACKED
    if huffman and len(symbols):
        coded = codec.encode(symbols)
        if len(coded) < len(data):
            data, coding = coded, HUFFMAN
    return _stream_bytes(coding, len(symbols), data)


def _code_width(k: int) -> int:
    return max(1, (k - 1).bit_length())


def _positions(keep: np.ndarray, huffman: bool, index_bits: int | None) -> bytes:
    """The positions block of a flat keep mask, at the given or the smallest width."""
    positions = np.flatnonzero(keep)
    if index_bits is not None:
        widths = [index_bits]
    else:
        # Widths past the one that needs no filler only make the packed stream longer.
        max_gap = int((np.diff(positions, prepend=-1) - 1).max()) if len(positions) else 0
        widths = range(1, min(MAX_BITS, (max_gap + 1).bit_length()) + 1)
    blocks = (bytes([b]) + _stream(_gap_symbols(positions, b), b, huffman) for b in widths)
    return min(blocks, key=len)


def _header(name: str, kind: int, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    raw = name.encode("utf-8")
    dims = b"".join(_varint(s) for s in shape)
    return _varint(len(raw)) + raw + bytes([kind, TORCH_DTYPES.index(dtype), len(shape)]) + dims


def _kept_part(keep: np.ndarray, huffman: bool, index_bits: int | None) -> bytes:
    n_kept = int(keep.sum())
    return _varint(n_kept) + (_positions(keep, huffman, index_bits) if n_kept < keep.size else b"")


def _encode_raw(name: str, t: Tensor) -> bytes:
    return _header(name, RAW, t.dtype, tuple(t.shape)) + _tensor_bytes(t)


def _encode_pruned(
    name: str, value: Tensor, mask: Tensor, huffman: bool, index_bits: int | None
) -> bytes:
    keep = mask.detach().cpu().reshape(-1)
    return (
        _header(name, PRUNED, value.dtype, tuple(value.shape))
        + _kept_part(keep.numpy(), huffman, index_bits)
        + _tensor_bytes(value.detach().cpu().reshape(-1)[keep])
    )


def _encode_shared(
    name: str,
    ws: WeightSharing,
    codebook: Tensor,
    huffman: bool,
    index_bits: int | None,
    codebook_dtype: torch.dtype | None,
) -> bytes:
    keep = ws.kept().cpu().reshape(-1).numpy()
    codes = ws.index.detach().cpu().reshape(-1).numpy()[keep]
    k = ws.num_centroids
    if (
        not 1 <= ws.bits <= MAX_BITS
        or codebook.shape[-1] != k
        or ws.index.dtype not in INDEX_DTYPES
        or (len(codes) and not 0 <= codes.min() <= codes.max() < k)
    ):
        raise ValueError(f"tensor {name!r}: inconsistent weight sharing ({ws.extra_repr()})")
    settings = bytes([ws.bits, GRANULARITIES.index(ws.granularity)]) + _varint(
        2 * ws.channel_axis if ws.channel_axis >= 0 else -2 * ws.channel_axis - 1
    )
    dtypes = (codebook_dtype or codebook.dtype, ws.index.dtype)
    return b"".join(
        [
            _header(name, SHARED, codebook.dtype, tuple(ws.index.shape)),
            settings,
            bytes([INITS.index(ws.init), METHODS.index(ws.method)]),
            _varint(k),
            bytes(TORCH_DTYPES.index(d) for d in dtypes),
            _tensor_bytes(codebook.detach().to(dtypes[0])),
            _kept_part(keep, huffman, index_bits),
            _stream(codes, _code_width(k), huffman),
        ]
    )


def _check_savable(model: nn.Module) -> None:
    """Refuse what a file could store but :func:`load_compressed` could not restore."""
    for q, *_ in torch_pruned_tensors(model):
        raise ValueError(
            f"tensor {q!r} is pruned by a torch.nn.utils.prune hook; adopt it with "
            "torchprune_share.level_prune(module, name, amount=0) before saving"
        )
    for prefix, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                if len(plist) != 1 or not isinstance(plist[0], (PruningMask, WeightSharing)):
                    q = f"{prefix}.{name}" if prefix else name
                    raise ValueError(
                        f"tensor {q!r} carries a parametrization other than this package's "
                        "one PruningMask or WeightSharing; it cannot be stored"
                    )


def _records(
    model: nn.Module, huffman: bool, index_bits: int | None, codebook_dtype: torch.dtype | None
) -> Iterator[bytes]:
    """One encoded record per tensor, in state_dict order."""
    _check_savable(model)
    owner, done = _owners(model), set()
    reparams = {q: (m, n, p) for q, m, n, p in compressed_tensors(model)}
    for key, t in model.state_dict().items():
        q = owner.get(key)
        if q is None:
            if not isinstance(t, Tensor) or t.dtype not in TORCH_DTYPES:
                what = t.dtype if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"state_dict entry {key!r} ({what}) cannot be stored")
            yield _encode_raw(key, t)
        elif q not in done:
            done.add(q)
            module, name, p = reparams[q]
            original = module.parametrizations[name].original
            if isinstance(p, PruningMask):
                yield _encode_pruned(q, original, p.mask, huffman, index_bits)
            else:
                yield _encode_shared(q, p, original, huffman, index_bits, codebook_dtype)


def _encode_model(
    model: nn.Module, huffman: bool, index_bits: int | None, codebook_dtype: torch.dtype | None
) -> bytes:
    if index_bits is not None and (
        isinstance(index_bits, bool) or not isinstance(index_bits, int) or not 1 <= index_bits <= 16
    ):
        raise ValueError(f"index_bits must be None or an int in [1, 16], got {index_bits!r}")
    if not isinstance(huffman, bool):
        raise TypeError(f"huffman must be a bool, got {type(huffman).__name__}")
    if codebook_dtype not in (None, torch.float32, torch.float16):
        raise ValueError(
            f"codebook_dtype must be None, torch.float32 or torch.float16, got {codebook_dtype}"
        )
    records = list(_records(model, huffman, index_bits, codebook_dtype))
    payload = _varint(len(records)) + b"".join(records)
    return PREAMBLE.pack(MAGIC, VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def save_compressed(
    model: nn.Module,
    path: str | Path | BinaryIO,
    *,
    index_bits: int | None = None,
    huffman: bool = True,
    codebook_dtype: torch.dtype | None = None,
) -> int:
    r"""Write ``model`` to a compressed file (Deep Compression's storage format).

    Pruned tensors store the positions of their kept entries as relative indices of
    ``index_bits`` bits (chosen per tensor to minimise the size when ``None``) and their
    kept values; shared tensors store their codebook and one code per kept entry; with
    ``huffman=True`` the index and code streams are Huffman coded where that is smaller.
    Everything else in the ``state_dict`` (biases, norms, buffers) is stored as is.

    Args:
        model (nn.Module): the (pruned and/or shared) model.
        path (str, Path or binary file): where to write.
        index_bits (int, optional): fixed relative-index width in [1, 16]; default chooses
            per tensor.
        huffman (bool): Huffman-code the index and code streams. Default: True.
        codebook_dtype (torch.dtype, optional): ``torch.float16`` halves the codebooks'
            size (lossless only if the codebooks hold float16 values); default keeps
            their dtype, so a reload is bitwise exact.

    Returns:
        The number of bytes written.

    Raises:
        ValueError: bad arguments, a tensor pruned with ``torch.nn.utils.prune`` hooks
            or carrying a foreign parametrization, or a state entry that is not a
            tensor of a supported dtype.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> n = save_compressed(net, "/tmp/net.tpsc")
        >>> n < 64 * 32 * 4 / 10
        True
    """
    blob = _encode_model(model, huffman, index_bits, codebook_dtype)
    if hasattr(path, "write"):
        path.write(blob)  # type: ignore[union-attr]
    else:
        Path(path).write_bytes(blob)
    return len(blob)


# -- reading ----------------------------------------------------------------------------
class _Reader:
    """Bounds-checked reads from the payload; every failure is a CompressedFileError."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos, self.what = data, 0, "payload"

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, msg: str) -> CompressedFileError:
        return CompressedFileError(f"{self.what}: {msg} (at payload byte {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n > self.remaining:
            raise self.fail(f"truncated: {what} needs {n} bytes, {self.remaining} left")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 63, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise self.fail(f"{what}: varint longer than 9 bytes")

    def count(self, what: str, limit: int) -> int:
        """A varint that must not exceed ``limit`` (checked before anything is allocated)."""
        value = self.varint(what)
        if value > limit:
            raise self.fail(f"{what} {value} exceeds the possible {limit}")
        return value

    def choice(self, options: tuple, what: str) -> Any:
        i = self.u8(what)
        if i >= len(options):
            raise self.fail(f"invalid {what} code {i}")
        return options[i]


@dataclass
class _Stream:
    count: int
    width: int
    size: int  # bytes in the file, coding byte and lengths included

    @property
    def packed_size(self) -> int:
        return _packed_stream_size(self.count, self.width)


@dataclass
class _Record:
    name: str
    kind: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    numel: int
    size: int = 0
    n_kept: int = 0
    positions: np.ndarray | None = None  # None: every entry kept
    index_bits: int | None = None
    values: Tensor | None = None  # raw: all entries; pruned: the kept ones
    codes: np.ndarray | None = None
    codebook: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # WeightSharing's extra state
    index_dtype: torch.dtype | None = None
    streams: list[_Stream] = field(default_factory=list)

    @property
    def rows(self) -> int:
        if self.settings.get("granularity") == "per_channel":
            return self.shape[self.settings["channel_axis"]]
        return 1


def _read_values(rd: _Reader, dtype: torch.dtype, count: int, what: str) -> Tensor:
    np_dtype = NUMPY_DTYPES[dtype]
    data = rd.take(count * np_dtype.itemsize, what)
    arr = np.frombuffer(data, dtype=np_dtype, count=count).astype(np_dtype.newbyteorder("="))
    if dtype == torch.bool:
        if count and arr.max() > 1:
            raise rd.fail(f"{what}: a bool holds a byte other than 0 or 1")
        return torch.from_numpy(arr).to(torch.bool)
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _read_stream(rd: _Reader, rec: _Record, width: int, limit: int, what: str) -> np.ndarray:
    start = rd.pos
    coding = rd.choice((PACKED, HUFFMAN), f"{what} coding")
    count = rd.count(f"{what} symbol count", limit)
    data = rd.take(rd.count(f"{what} byte length", rd.remaining), what)
    if coding == PACKED:
        if len(data) != codec.packed_nbytes(count, width):
            raise rd.fail(f"{what}: {len(data)} bytes for {count} packed {width}-bit symbols")
        symbols = codec.unpack_bits(data, width, count)
    else:
        if not count:
            raise rd.fail(f"{what}: empty Huffman stream")
        try:
            symbols = codec.decode(data)
        except codec.CodecError as err:
            raise rd.fail(f"{what}: {err}") from err
        if len(symbols) != count:
            raise rd.fail(f"{what}: decodes to {len(symbols)} symbols, header says {count}")
        if int(symbols.max()) >> width:
            raise rd.fail(f"{what}: symbol {int(symbols.max())} does not fit {width} bits")
    rec.streams.append(_Stream(count, width, rd.pos - start))
    return symbols.astype(np.int64)


def _read_positions(rd: _Reader, rec: _Record) -> None:
    bits = rd.u8("index bits")
    if not 1 <= bits <= MAX_BITS:
        raise rd.fail(f"index bits {bits} not in [1, {MAX_BITS}]")
    # A symbol skips at least one entry or marks one, so no valid stream is longer.
    symbols = _read_stream(rd, rec, bits, rec.numel, "index stream")
    cap = (1 << bits) - 1
    kept = symbols != cap
    if len(symbols) and not kept[-1]:
        raise rd.fail("index stream ends with a filler")
    ends = np.cumsum(np.where(kept, symbols + 1, cap))  # int64: count * cap < 2**63
    positions = ends[kept] - 1
    if len(positions) != rec.n_kept:
        raise rd.fail(f"index stream marks {len(positions)} entries, header says {rec.n_kept}")
    if len(positions) and positions[-1] >= rec.numel:
        raise rd.fail(
            f"index stream decodes past the tensor's end: entry {int(positions[-1])} of {rec.numel}"
        )
    rec.positions, rec.index_bits = positions, bits


def _read_kept(rd: _Reader, rec: _Record) -> None:
    rec.n_kept = rd.count("kept entry count", rec.numel)
    if rec.n_kept < rec.numel:
        _read_positions(rd, rec)


def _read_raw(rd: _Reader, rec: _Record) -> None:
    rec.n_kept = rec.numel
    rec.values = _read_values(rd, rec.dtype, rec.numel, "tensor data")


def _read_pruned(rd: _Reader, rec: _Record) -> None:
    if not rec.dtype.is_floating_point:
        raise rd.fail(f"a pruned tensor must be floating point, not {rec.dtype}")
    _read_kept(rd, rec)
    rec.values = _read_values(rd, rec.dtype, rec.n_kept, "kept values")


def _read_sharing_settings(rd: _Reader, rec: _Record) -> None:
    bits = rd.u8("bits")
    if not 1 <= bits <= MAX_BITS:
        raise rd.fail(f"bits {bits} not in [1, {MAX_BITS}]")
    granularity = rd.choice(GRANULARITIES, "granularity")
    z = rd.varint("channel axis")
    axis = z >> 1 if z % 2 == 0 else -(z >> 1) - 1
    ndim = len(rec.shape)
    if granularity == "per_channel" and not -ndim <= axis < ndim:
        raise rd.fail(f"channel axis {axis} invalid for shape {rec.shape}")
    init, method = rd.choice(INITS, "init"), rd.choice(METHODS, "method")
    k = rd.count("centroid count", 1 << bits)
    rec.settings = dict(
        bits=bits,
        granularity=granularity,
        channel_axis=axis,
        init=init,
        method=method,
        num_centroids=k,
    )


def _read_shared(rd: _Reader, rec: _Record) -> None:
    if not rec.dtype.is_floating_point:
        raise rd.fail(f"a shared tensor must be floating point, not {rec.dtype}")
    _read_sharing_settings(rd, rec)
    k = rec.settings["num_centroids"]
    cb_dtype = rd.choice(TORCH_DTYPES, "codebook dtype")
    rec.index_dtype = rd.choice(TORCH_DTYPES, "index dtype")
    if not cb_dtype.is_floating_point or rec.index_dtype not in INDEX_DTYPES:
        raise rd.fail(f"invalid codebook dtype {cb_dtype} or index dtype {rec.index_dtype}")
    rec.codebook = _read_values(rd, cb_dtype, rec.rows * k, "codebook")
    _read_kept(rd, rec)
    if rec.n_kept and not k:
        raise rd.fail("kept entries but an empty codebook")
    rec.codes = _read_stream(rd, rec, _code_width(k), rec.n_kept, "code stream")
    if len(rec.codes) != rec.n_kept:
        raise rd.fail(f"code stream holds {len(rec.codes)} codes, header says {rec.n_kept}")
    if len(rec.codes) and int(rec.codes.max()) >= k:
        raise rd.fail(f"code {int(rec.codes.max())} out of range for {k} centroids")
    max_code = k if rec.n_kept < rec.numel else max(k - 1, 0)
    if max_code > torch.iinfo(rec.index_dtype).max:
        raise rd.fail(f"index dtype {rec.index_dtype} cannot hold code {max_code}")


_READERS = {RAW: _read_raw, PRUNED: _read_pruned, SHARED: _read_shared}


def _read_record(rd: _Reader, check: Callable[[_Record], str | None] | None) -> _Record:
    start = rd.pos
    rd.what = f"record starting at payload byte {start}"
    try:
        name = bytes(rd.take(rd.count("name length", rd.remaining), "name")).decode("utf-8")
    except UnicodeDecodeError as err:
        raise rd.fail("tensor name is not UTF-8") from err
    rd.what = f"tensor {name!r}"
    kind = rd.choice((RAW, PRUNED, SHARED), "record kind")
    dtype = rd.choice(TORCH_DTYPES, "dtype")
    shape = tuple(rd.varint("shape") for _ in range(rd.u8("ndim")))
    if any(s > MAX_NUMEL for s in shape) or math.prod(shape) > MAX_NUMEL:
        raise rd.fail(f"shape {shape} is impossibly large")
    rec = _Record(name, kind, dtype, shape, math.prod(shape))
    problem = check(rec) if check else None
    if problem:
        raise rd.fail(problem)
    _READERS[kind](rd, rec)
    rec.size = rd.pos - start
    return rec


def _payload(view: memoryview) -> memoryview:
    if len(view) < PREAMBLE.size:
        raise CompressedFileError(
            f"file truncated: {len(view)} bytes, the preamble alone is {PREAMBLE.size}"
        )
    magic, version, flags, length, crc = PREAMBLE.unpack_from(view, 0)
    if magic != MAGIC:
        raise CompressedFileError(f"not a torchprune_share file (magic {magic!r}, want {MAGIC!r})")
    if version != VERSION:
        raise CompressedFileError(
            f"unsupported format version {version} (this library reads version {VERSION})"
        )
    if flags:
        raise CompressedFileError(f"unknown flags {flags:#06x} in the preamble")
    payload = view[PREAMBLE.size :]
    if len(payload) != length:
        raise CompressedFileError(
            f"file truncated or padded: the payload is {len(payload)} bytes, the preamble "
            f"says {length}"
        )
    if zlib.crc32(payload) != crc:
        raise CompressedFileError("checksum mismatch: the file is corrupt")
    return payload


def _parse(
    blob: bytes, check: Callable[[_Record], str | None] | None = None
) -> tuple[list[_Record], int]:
    """Validate and decode a file; returns its records and the bytes outside them.

    ``check`` sees every record's name, kind and shape before its body is read and
    returns a problem to report, or None. Nothing here allocates more than a small
    multiple of the file's size.
    """
    rd = _Reader(_payload(memoryview(blob)))
    count = rd.count("record count", rd.remaining // 4)  # a record has at least 4 bytes
    records, names = [], set()
    for _ in range(count):
        rec = _read_record(rd, check)
        if rec.name in names:
            raise CompressedFileError(f"tensor {rec.name!r}: stored twice")
        names.add(rec.name)
        records.append(rec)
    rd.what = "payload"
    if rd.remaining:
        raise rd.fail(f"{rd.remaining} bytes after the last record")
    return records, len(blob) - sum(r.size for r in records)


def _read(path: str | Path | BinaryIO | bytes) -> bytes:
    if isinstance(path, (bytes, bytearray, memoryview)):
        return bytes(path)
    if hasattr(path, "read"):
        return path.read()  # type: ignore[union-attr]
    return Path(path).read_bytes()


# -- loading into a model ---------------------------------------------------------------
def _owners(model: nn.Module) -> dict[str, str]:
    """state_dict key -> dense name, for the keys of every pruned or shared tensor."""
    bases = {_reparam_base(q) + ".": q for q, *_ in compressed_tensors(model)}
    owner = {}
    for key in model.state_dict():
        m = _REPARAM_KEY.match(key)
        if m and m[0] in bases:
            owner[key] = bases[m[0]]
    for q, *_ in torch_pruned_tensors(model):
        owner[q + "_orig"] = owner[q + "_mask"] = q
    return owner


def _reparam_base(q: str) -> str:
    prefix, _, name = q.rpartition(".")
    return f"{prefix}.parametrizations.{name}" if prefix else f"parametrizations.{name}"


@dataclass
class _Expected:
    """The tensors a file for ``model`` holds: name -> shape, by how they may be stored."""

    plain: dict[str, tuple[int, ...]]  # raw records: every key not owned by a reparam
    compressible: dict[str, tuple[int, ...]]  # pruned/shared: float parameters
    required: set[str]

    @classmethod
    def of(cls, model: nn.Module) -> _Expected:
        owner = _owners(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        plain, compressible = {}, {}
        for key, t in model.state_dict().items():
            q = owner.get(key)
            if q is not None:
                module_name, _, name = q.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                compressible[q] = tuple(getattr(module, name).shape)
            elif isinstance(t, Tensor):
                plain[key] = tuple(t.shape)
                if key in params and t.is_floating_point():
                    compressible[key] = tuple(t.shape)
        required = {owner.get(key, key) for key in model.state_dict()}
        return cls(plain, compressible, required)

    def problem(self, rec: _Record) -> str | None:
        names = self.plain if rec.kind == RAW else self.compressible
        if rec.name not in names:
            if rec.kind == RAW and rec.name in self.compressible:
                return "stored plain, but the model prunes or shares it; use a fresh model"
            if rec.name in self.plain:
                return "stored pruned or shared, but the model's tensor is no float parameter"
            return "the model has no such tensor (a file for another architecture?)"
        if names[rec.name] != rec.shape:
            return f"shape {rec.shape} does not match the model's {names[rec.name]}"
        return None


def _state_dict(records: list[_Record]) -> dict[str, Any]:
    """The state_dict (as :func:`load_state_dict` takes it) of validated records."""
    state: dict[str, Any] = {}
    for rec in records:
        if rec.kind == RAW:
            state[rec.name] = rec.values.reshape(rec.shape)
            continue
        base = _reparam_base(rec.name)
        kept = torch.arange(rec.numel) if rec.positions is None else torch.from_numpy(rec.positions)
        if rec.kind == PRUNED:
            original = torch.zeros(rec.numel, dtype=rec.dtype)
            mask = torch.zeros(rec.numel, dtype=torch.bool)
            original[kept], mask[kept] = rec.values, True
            state[f"{base}.original"] = original.reshape(rec.shape)
            state[f"{base}.0.mask"] = mask.reshape(rec.shape)
        else:
            k = rec.settings["num_centroids"]
            zero = k if rec.n_kept < rec.numel else 0  # k may not fit when nothing is pruned
            index = torch.full((rec.numel,), zero, dtype=rec.index_dtype)
            index[kept] = torch.from_numpy(rec.codes).to(rec.index_dtype)
            cb_shape = (rec.rows, k) if rec.settings["granularity"] == "per_channel" else (k,)
            state[f"{base}.original"] = rec.codebook.reshape(cb_shape).to(rec.dtype)
            state[f"{base}.0.index"] = index.reshape(rec.shape)
            state[f"{base}.0._extra_state"] = dict(rec.settings)
    return state


def load_compressed(
    model: nn.Module, path: str | Path | BinaryIO | bytes, *, bake: bool = False
) -> nn.Module:
    r"""Load a compressed file into a freshly built model of the same architecture.

    The model becomes pruned and shared exactly as the saved one (same
    reparametrizations and settings, trainable codebooks) and computes bitwise the same
    outputs; a pruned tensor's ``original`` is zero where the mask is ``False`` (the
    file does not store pruned values). The whole file is checked (checksum, version,
    every tensor's name, shape and streams) before the model changes: on any problem a
    :class:`CompressedFileError` says what and where, and the model is left as it was.
    Reading never unpickles anything.

    Args:
        model (nn.Module): the model to load into (changed in place).
        path (str, Path, binary file or bytes): the file, or its contents.
        bake (bool): give plain ``nn.Parameter`` weights of the same values instead of
            reparametrizations. Default: False.

    Returns:
        ``model``.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> _ = save_compressed(net, "/tmp/net.tpsc")
        >>> fresh = load_compressed(nn.Sequential(nn.Linear(64, 32)), "/tmp/net.tpsc")
        >>> torch.equal(fresh[0].weight, net[0].weight)
        True
    """
    expected = _Expected.of(model)
    records, _ = _parse(_read(path), expected.problem)
    missing = sorted(expected.required - {r.name for r in records})
    if missing:
        raise CompressedFileError(f"the file lacks tensors the model has: {missing}")
    try:
        load_state_dict(model, _state_dict(records))
    except CheckpointError as err:
        raise CompressedFileError(str(err)) from err
    if bake:
        bake_model(model)
    return model


# -- report -----------------------------------------------------------------------------
def _packed_positions_size(rec: _Record) -> int:
    """Bytes of ``rec``'s positions block packed at its best fixed width (no Huffman).

    The file's width minimises the Huffman-coded size and can be far from the best
    packed width (e.g. 11 bits where 5 would do), so P and P+Q are taken at their own.
    """
    if rec.positions is None:
        return 0
    keep = np.zeros(rec.numel, dtype=bool)
    keep[rec.positions] = True
    return len(_positions(keep, huffman=False, index_bits=None))


def _pruned_size(rec: _Record) -> int:
    """Bytes of ``rec`` stored as a pruned record with packed relative indices."""
    size = len(_header(rec.name, PRUNED, rec.dtype, rec.shape)) + len(_varint(rec.n_kept))
    size += _packed_positions_size(rec)
    return size + rec.n_kept * NUMPY_DTYPES[rec.dtype].itemsize


def _report_row(rec: _Record) -> dict[str, Any]:
    dense = rec.numel * NUMPY_DTYPES[rec.dtype].itemsize
    packed = rec.size + sum(s.packed_size - s.size for s in rec.streams)
    if rec.positions is not None:
        # Swap the positions block packed at the file's width for the best packed one.
        packed += _packed_positions_size(rec) - (1 + rec.streams[0].packed_size)
    return dict(
        tensor=rec.name,
        weights=rec.numel,
        density=rec.n_kept / rec.numel if rec.numel else 1.0,
        bits=rec.settings.get("bits"),
        index_bits=rec.index_bits,
        dense=dense,
        P=_pruned_size(rec) if rec.kind == SHARED else packed,
        PQ=packed,
        PQH=rec.size,
        ratio=dense / rec.size,
    )


COLUMNS = ("tensor", "weights", "density", "bits", "index_bits", "dense", "P", "PQ", "PQH", "ratio")
TABLE_HEAD = (
    *("tensor", "weights", "density", "bits", "idx bits"),
    *("dense B", "P B", "P+Q B", "P+Q+H B", "ratio"),
)


@dataclass
class CompressionReport:
    """Per-tensor sizes in the columns of Deep Compression's Tables 2-4.

    ``rows`` hold, per stored tensor: ``tensor``, ``weights`` (entries), ``density``
    (kept fraction), ``bits`` (sharing width), ``index_bits`` (relative-index width),
    ``dense`` (bytes of the dense tensor in its dtype: fp32 for an fp32 model), and the
    bytes of the tensor's record stored three ways: ``P`` after pruning (relative
    indices packed at their width + kept values in the tensor's dtype), ``PQ`` after
    sharing (packed relative indices + packed codes + codebook), ``PQH`` after Huffman
    coding (the record's real bytes in the file); ``ratio`` is ``dense / PQH``. A raw
    tensor costs its bytes plus its name and shape in every column; a pruned-only tensor
    has ``P == PQ``. ``P`` and ``PQ`` are exactly the sizes the record would have in a
    file written with ``huffman=False`` (each at its best packed index width), so
    ``PQH <= PQ``. ``overhead`` is the preamble plus the record count:
    ``file_bytes == sum(PQH) + overhead``.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> report = compression_report(net)
        >>> report.file_bytes == report.totals()["PQH"] + report.overhead
        True
        >>> print(report.to_table().splitlines()[0].split()[:4])
        ['tensor', 'weights', 'density', 'bits']
    """

    rows: list[dict[str, Any]]
    file_bytes: int
    overhead: int

    COLUMNS = COLUMNS

    def totals(self) -> dict[str, Any]:
        """The totals row (density over all stored entries, ratio of the sums).

        Returns:
            A dict with the keys of :attr:`COLUMNS`; ``tensor`` is ``"total"``.

        Example:
            >>> r = compression_report(nn.Sequential(nn.Linear(4, 4)))
            >>> r.totals()["tensor"], r.totals()["weights"]
            ('total', 20)
        """
        weights = sum(r["weights"] for r in self.rows)
        kept = sum(r["weights"] * r["density"] for r in self.rows)
        out = dict(tensor="total", weights=weights, bits=None, index_bits=None)
        out["density"] = kept / weights if weights else 1.0
        out.update({col: sum(r[col] for r in self.rows) for col in ("dense", "P", "PQ", "PQH")})
        out["ratio"] = out["dense"] / out["PQH"] if out["PQH"] else float("inf")
        return out

    def _cells(self) -> list[list[str]]:
        def cell(r: dict[str, Any], col: str) -> str:
            value = r[col]
            if value is None:
                return "-"
            if col == "density":
                return f"{100 * value:.1f}%"
            return f"{value:.1f}x" if col == "ratio" else str(value)

        return [[cell(r, col) for col in COLUMNS] for r in [*self.rows, self.totals()]]

    def _footer(self) -> str:
        records = self.file_bytes - self.overhead
        return f"file: {self.file_bytes} bytes = {records} in records + {self.overhead} header"

    def to_table(self) -> str:
        """A plain-text table with a totals row and the file size.

        Returns:
            The table, one line per tensor, then totals and the file size.

        Example:
            >>> print(compression_report(nn.Sequential(nn.Linear(4, 4))).to_table())  # doctest: +SKIP
        """
        body = self._cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(TABLE_HEAD)]

        def fmt(row: list[str] | tuple[str, ...]) -> str:
            cells = [
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells)

        lines = [fmt(TABLE_HEAD), fmt(["-" * w for w in widths]), *map(fmt, body)]
        return "\n".join([*lines, self._footer()])

    def to_csv(self, path: str | Path) -> None:
        """Write the rows and the totals row as CSV (header: :attr:`COLUMNS`).

        Args:
            path (str or Path): the file to write.

        Example:
            >>> compression_report(nn.Sequential(nn.Linear(4, 4))).to_csv("/tmp/r.csv")
            >>> open("/tmp/r.csv").readline().strip()
            'tensor,weights,density,bits,index_bits,dense,P,PQ,PQH,ratio'
        """
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for r in [*self.rows, self.totals()]:
                writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])

    def to_markdown(self, path: str | Path | None = None) -> str:
        """The table as GitHub Markdown; written to ``path`` when given.

        Args:
            path (str or Path, optional): where to write it.

        Returns:
            The Markdown text.

        Example:
            >>> compression_report(nn.Sequential(nn.Linear(4, 4))).to_markdown()[:10]
            '| tensor |'
        """
        lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        text = "\n".join([*lines, "", self._footer()]) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def __str__(self) -> str:
        return self.to_table()


def compression_report(
    model_or_path: nn.Module | str | Path | BinaryIO | bytes, **save_kwargs: Any
) -> CompressionReport:
    r"""Report the compressed size of a model or file, per tensor and in total.

    Args:
        model_or_path (nn.Module, str, Path, binary file or bytes): a model (encoded in
            memory with ``save_kwargs``) or a compressed file.
        **save_kwargs: options of :func:`save_compressed` when given a model.

    Returns:
        A :class:`CompressionReport`; its ``file_bytes`` is the real file size.

    Raises:
        CompressedFileError: the file is malformed.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> r = compression_report(net)
        >>> r.file_bytes == sum(row["PQH"] for row in r.rows) + r.overhead
        True
    """
    if isinstance(model_or_path, nn.Module):
        buf = io.BytesIO()
        save_compressed(model_or_path, buf, **save_kwargs)
        blob = buf.getvalue()
    else:
        blob = _read(model_or_path)
    records, overhead = _parse(blob)
    return CompressionReport([_report_row(r) for r in records], len(blob), overhead)
