"""The compressed model file: sparse relative indices, packed codes, Huffman coding.

A ``.tpsc`` file is a compact encoding of a compressed model's ``state_dict`` that needs
no pickle to read. Its size in bytes is the model's real compressed size.

Byte layout (``varint`` = unsigned LEB128; all fixed-width integers little-endian)::

    offset 0   4 B   magic b"TPSC"
           4   u16   format version (1)
           6   u16   flags (0)
           8   u64   payload length P
          16   u32   CRC-32 (zlib) of the payload
          20   P B   payload: varint record count, then the records

    record     varint name length, UTF-8 name (the state_dict key, or for a compressed
               tensor its dense name such as "fc1.weight")
               u8 kind: 0 raw, 1 pruned, 2 shared
               u8 dtype, u8 ndim, ndim x varint shape
      raw:     the tensor's bytes (numel x itemsize, C order)
      pruned:  varint n_kept, positions (if n_kept < numel), n_kept values (dtype bytes)
      shared:  u8 bits, u8 granularity, zigzag-varint channel_axis, u8 init, u8 method,
               varint k (centroids per codebook), u8 codebook dtype, u8 index dtype,
               codebook bytes (rows x k, rows = channels or 1),
               varint n_kept, positions (if n_kept < numel), codes
    positions  u8 index_bits b, stream: gaps between kept entries in C order. A symbol
               s < 2**b - 1 skips s positions and marks the next one kept; s = 2**b - 1 is
               a filler that skips 2**b - 1 positions and marks nothing (Deep Compression's
               relative index, its filler without a code).
    codes      stream of the kept entries' codes, 0..k-1 (per channel: into that
               channel's codebook)
    stream     u8 coding (0 packed, 1 Huffman), varint symbol count, varint byte length,
               bytes: fixed-width packing at the record's width (b for positions,
               max(1, bit_length(k - 1)) for codes) or a canonical Huffman stream
               (:mod:`torchprune_share.codec.huffman`), whichever is smaller when
               Huffman coding is on.

Loading never executes code; every malformed input raises :class:`CompressedFileError`
naming the problem and the tensor, and leaves the model untouched.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from . import codec
from .checkpoint import CheckpointError, _dense_shape, _owner, compressed_tensors, load_state_dict
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

DTYPES: list[torch.dtype] = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
INITS = ("linear", "density", "random", "kmeans++")
METHODS = ("lloyd", "optimal", "sklearn")


class CompressedFileError(ValueError):
    """A compressed model file is malformed, corrupt, or does not fit the model."""


# -- byte-level writing -----------------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _gap_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    """Relative-index symbols (with fillers) for sorted kept positions."""
    cap = (1 << bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // cap
    total = len(gaps) + int(fillers.sum())
    symbols = np.full(total, cap, dtype=np.int64)
    # Each kept entry's symbol sits after its fillers.
    ends = np.cumsum(fillers + 1) - 1
    symbols[ends] = gaps - fillers * cap
    return symbols


def _stream(symbols: np.ndarray, width: int, huffman: bool) -> tuple[bytes, int]:
    """Encode a symbol stream; returns (bytes, coding)."""
    packed = (
        codec.pack_bits(symbols.astype(np.uint64 if width > 32 else np.uint32), width)
        if width <= 32
        else None
    )
    best, coding = packed, PACKED
    if huffman and len(symbols):
        coded = codec.encode(symbols)
        if best is None or len(coded) < len(best):
            best, coding = coded, HUFFMAN
    assert best is not None
    return bytes([coding]) + _varint(len(symbols)) + _varint(len(best)) + best, coding


def _choose_index_bits(positions: np.ndarray, numel: int, huffman: bool, fixed: int | None) -> int:
    if fixed is not None:
        return fixed
    best_bits, best_size = 1, None
    span = max(1, int(np.diff(positions, prepend=-1).max()) if len(positions) else numel)
    for bits in range(1, min(16, max(1, span.bit_length())) + 1):
        symbols = _gap_symbols(positions, bits)
        size = codec.encoded_size_bits(symbols) if huffman else len(symbols) * bits
        size = min(size, len(symbols) * bits)
        if best_size is None or size < best_size:
            best_bits, best_size = bits, size
    return best_bits


def _header(name: str, kind: int, dtype: torch.dtype, shape: torch.Size) -> bytes:
    raw = name.encode("utf-8")
    return (
        _varint(len(raw))
        + raw
        + bytes([kind, DTYPES.index(dtype), len(shape)])
        + b"".join(_varint(s) for s in shape)
    )


def _positions_block(keep: np.ndarray, numel: int, huffman: bool, index_bits: int | None) -> bytes:
    positions = np.flatnonzero(keep)
    bits = _choose_index_bits(positions, numel, huffman, index_bits)
    data, _ = _stream(_gap_symbols(positions, bits), bits, huffman)
    return bytes([bits]) + data


def _encode_raw(name: str, t: Tensor) -> bytes:
    return _header(name, RAW, t.dtype, t.shape) + _tensor_bytes(t)


def _encode_pruned(
    name: str, value: Tensor, keep: Tensor, huffman: bool, index_bits: int | None
) -> bytes:
    keep_np = keep.detach().cpu().numpy().reshape(-1)
    n_kept = int(keep_np.sum())
    parts = [_header(name, PRUNED, value.dtype, value.shape), _varint(n_kept)]
    if n_kept < value.numel():
        parts.append(_positions_block(keep_np, value.numel(), huffman, index_bits))
    kept_values = value.detach().reshape(-1)[torch.from_numpy(keep_np).to(value.device)]
    parts.append(_tensor_bytes(kept_values))
    return b"".join(parts)


def _encode_shared(
    name: str,
    ws: WeightSharing,
    codebook: Tensor,
    huffman: bool,
    index_bits: int | None,
    codebook_dtype: torch.dtype | None,
) -> bytes:
    index = ws.index.detach().cpu()
    numel = index.numel()
    k = ws.num_centroids
    cb = codebook.detach().to(codebook_dtype or codebook.dtype)
    codes = index.reshape(-1).to(torch.int64).numpy()
    keep_np = codes != k
    n_kept = int(keep_np.sum())
    parts = [
        _header(name, SHARED, codebook.dtype, index.shape),
        bytes([ws.bits, GRANULARITIES.index(ws.granularity)]),
        _varint(_zigzag(ws.channel_axis)),
        bytes([INITS.index(ws.init), METHODS.index(ws.method)]),
        _varint(k),
        bytes([DTYPES.index(cb.dtype), DTYPES.index(index.dtype)]),
        _tensor_bytes(cb),
        _varint(n_kept),
    ]
    if n_kept < numel:
        parts.append(_positions_block(keep_np, numel, huffman, index_bits))
    width = max(1, (k - 1).bit_length())
    data, _ = _stream(codes[keep_np], width, huffman)
    parts.append(data)
    return b"".join(parts)


def _encode_model(
    model: nn.Module, huffman: bool, index_bits: int | None, codebook_dtype: torch.dtype | None
) -> bytes:
    if index_bits is not None and not (isinstance(index_bits, int) and 1 <= index_bits <= 16):
        raise ValueError(f"index_bits must be None or an int in [1, 16], got {index_bits!r}")
    if codebook_dtype not in (None, torch.float32, torch.float16):
        raise ValueError(
            f"codebook_dtype must be None, torch.float32 or torch.float16, got {codebook_dtype}"
        )
    reparams = {q: (module, name, p) for q, module, name, p in compressed_tensors(model)}
    state = model.state_dict()
    records, done = [], set()
    for key, t in state.items():
        owner = _owner(key)
        if owner in reparams:
            if owner in done:
                continue
            done.add(owner)
            module, name, p = reparams[owner]
            if isinstance(p, PruningMask):
                value = module.parametrizations[name].original
                rec = _encode_pruned(owner, value, p.mask, huffman, index_bits)
            else:
                codebook = module.parametrizations[name].original
                rec = _encode_shared(owner, p, codebook, huffman, index_bits, codebook_dtype)
        else:
            if not isinstance(t, Tensor):
                raise ValueError(
                    f"state_dict entry {key!r} is not a tensor ({type(t).__name__}); cannot store it"
                )
            if t.dtype not in DTYPES:
                raise ValueError(f"tensor {key!r} has unsupported dtype {t.dtype}")
            rec = _encode_raw(key, t)
        records.append(rec)
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
    ``index_bits`` bits (chosen per tensor to minimise the size when ``None``); shared
    tensors store their codebook and one code per kept entry; with ``huffman=True`` both
    streams are Huffman coded. Everything else is stored as is.

    Args:
        model (nn.Module): the (pruned and/or shared) model.
        path (str, Path or binary file): where to write.
        index_bits (int, optional): fixed relative-index width in [1, 16]; default chooses
            per tensor.
        huffman (bool): Huffman-code the index and code streams. Default: True.
        codebook_dtype (torch.dtype, optional): ``torch.float16`` halves the codebooks'
            size (the loaded model then differs from the saved one by that rounding);
            default keeps their dtype, so a reload is bitwise exact.

    Returns:
        The number of bytes written.

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


# -- reading ---------------------------------------------------------------------------
class _Reader:
    """Bounds-checked reads from the payload; every failure is a CompressedFileError."""

    def __init__(self, data: memoryview, what: str = "payload") -> None:
        self.data, self.pos, self.what = data, 0, what

    def fail(self, msg: str) -> CompressedFileError:
        return CompressedFileError(f"{self.what}: {msg} (at byte {self.pos})")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: needs {n} more bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise self.fail("varint longer than 64 bits")

    def choice(self, options: tuple | list, what: str) -> Any:
        i = self.u8()
        if i >= len(options):
            raise self.fail(f"invalid {what} code {i}")
        return options[i]


def _from_bytes(data: memoryview, dtype: torch.dtype, count: int, what: str) -> Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != count * itemsize:
        raise CompressedFileError(f"{what}: expected {count * itemsize} bytes, found {len(data)}")
    np_dtype = {torch.bfloat16: np.int16, torch.bool: np.bool_}.get(dtype)
    if np_dtype is None:
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    arr = np.frombuffer(data, dtype=np_dtype, count=count).copy()
    if dtype == torch.bool and arr.size and not np.isin(arr.view(np.uint8), (0, 1)).all():
        raise CompressedFileError(f"{what}: bool tensor holds values other than 0/1")
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _read_stream(rd: _Reader, width: int, limit: int, what: str) -> np.ndarray:
    coding = rd.choice((PACKED, HUFFMAN), f"{what} coding")
    count = rd.varint()
    nbytes = rd.varint()
    data = rd.take(nbytes)
    if count > limit:
        raise rd.fail(f"{what}: {count} symbols, at most {limit} possible")
    try:
        if coding == PACKED:
            symbols = codec.unpack_bits(data, width, count).astype(np.int64)
        else:
            symbols = np.asarray(codec.decode(data), dtype=np.int64)
    except codec.CodecError as err:
        raise rd.fail(f"{what}: {err}") from err
    if len(symbols) != count:
        raise rd.fail(f"{what}: decoded {len(symbols)} symbols, header says {count}")
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= (1 << width)):
        raise rd.fail(f"{what}: symbol out of range for {width} bits")
    return symbols


def _read_positions(rd: _Reader, numel: int, n_kept: int, what: str) -> tuple[np.ndarray, int]:
    bits = rd.u8()
    if not 1 <= bits <= 16:
        raise rd.fail(f"{what}: index bits {bits} not in [1, 16]")
    cap = (1 << bits) - 1
    # Every symbol advances at least one position, except fillers that advance cap >= 1.
    symbols = _read_stream(rd, bits, numel, f"{what} index stream")
    advance = np.where(symbols == cap, symbols, symbols + 1)
    ends = np.cumsum(advance)
    entries = symbols != cap
    positions = ends[entries] - 1
    if len(positions) != n_kept:
        raise rd.fail(f"{what}: index stream marks {len(positions)} entries, header says {n_kept}")
    if len(positions) and positions[-1] >= numel:
        raise rd.fail(f"{what}: index stream decodes past the tensor's end ({numel} entries)")
    return positions, bits


@dataclass
class _Record:
    name: str
    kind: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


def _parse(
    blob: bytes | memoryview, expected: dict[str, tuple[int, ...]] | None
) -> tuple[list[_Record], dict[str, Tensor | dict]]:
    """Validate and decode a file into a state_dict; ``expected`` maps names to shapes."""
    view = memoryview(blob)
    if len(view) < PREAMBLE.size:
        raise CompressedFileError(
            f"file truncated: {len(view)} bytes, the preamble alone is {PREAMBLE.size}"
        )
    magic, version, _flags, length, crc = PREAMBLE.unpack_from(view, 0)
    if magic != MAGIC:
        raise CompressedFileError(
            f"not a torchprune_share file (magic {bytes(magic)!r}, want {MAGIC!r})"
        )
    if version != VERSION:
        raise CompressedFileError(
            f"unsupported format version {version} (this library reads {VERSION})"
        )
    payload = view[PREAMBLE.size :]
    if len(payload) != length:
        raise CompressedFileError(
            f"file truncated or padded: payload is {len(payload)} bytes, header says {length}"
        )
    if zlib.crc32(payload) != crc:
        raise CompressedFileError("checksum mismatch: the file is corrupt")
    rd = _Reader(payload)
    count = rd.varint()
    if count > len(payload):
        raise rd.fail(f"record count {count} exceeds the payload size")
    records, state = [], {}
    for _ in range(count):
        start = rd.pos
        name_len = rd.varint()
        try:
            name = bytes(rd.take(name_len)).decode("utf-8")
        except UnicodeDecodeError as err:
            raise rd.fail("tensor name is not UTF-8") from err
        rd.what = f"tensor {name!r}"
        kind = rd.choice((RAW, PRUNED, SHARED), "record kind")
        dtype = rd.choice(DTYPES, "dtype")
        ndim = rd.u8()
        shape = tuple(rd.varint() for _ in range(ndim))
        if name in {r.name for r in records}:
            raise rd.fail("stored twice")
        if expected is not None:
            if name not in expected:
                raise rd.fail("the model has no such tensor")
            if tuple(expected[name]) != shape:
                raise rd.fail(f"shape {shape} does not match the model's {tuple(expected[name])}")
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        rec = _Record(name, kind, dtype, shape, start)
        what = f"tensor {name!r}"
        if kind == RAW:
            itemsize = torch.empty((), dtype=dtype).element_size()
            t = _from_bytes(rd.take(numel * itemsize), dtype, numel, what)
            state[name] = t.reshape(shape)
        elif kind == PRUNED:
            if not dtype.is_floating_point:
                raise rd.fail("pruned tensors must be floating point")
            n_kept = rd.varint()
            if n_kept > numel:
                raise rd.fail(f"{n_kept} kept entries in a tensor of {numel}")
            positions, index_bits = (
                _read_positions(rd, numel, n_kept, what) if n_kept < numel else (None, None)
            )
            itemsize = torch.empty((), dtype=dtype).element_size()
            values = _from_bytes(rd.take(n_kept * itemsize), dtype, n_kept, what)
            rec.fields.update(n_kept=n_kept, positions=positions, index_bits=index_bits)
            if expected is not None:
                original = torch.zeros(numel, dtype=dtype)
                mask = torch.zeros(numel, dtype=torch.bool)
                idx = torch.arange(numel) if positions is None else torch.from_numpy(positions)
                original[idx] = values
                mask[idx] = True
                prefix, _, tname = name.rpartition(".")
                base = (
                    f"{prefix}.parametrizations.{tname}" if prefix else f"parametrizations.{tname}"
                )
                state[f"{base}.original"] = original.reshape(shape)
                state[f"{base}.0.mask"] = mask.reshape(shape)
        elif kind == SHARED:
            if not dtype.is_floating_point:
                raise rd.fail("shared tensors must be floating point")
            bits = rd.u8()
            if not 1 <= bits <= 16:
                raise rd.fail(f"bits {bits} not in [1, 16]")
            granularity = rd.choice(GRANULARITIES, "granularity")
            z = rd.varint()
            channel_axis = z // 2 if z % 2 == 0 else -(z + 1) // 2
            init = rd.choice(INITS, "init")
            method = rd.choice(METHODS, "method")
            k = rd.varint()
            if k > 2**bits:
                raise rd.fail(f"{k} centroids exceed 2**{bits}")
            cb_dtype = rd.choice(DTYPES, "codebook dtype")
            index_dtype = rd.choice(DTYPES, "index dtype")
            if not cb_dtype.is_floating_point or index_dtype not in (
                torch.uint8,
                torch.int16,
                torch.int32,
            ):
                raise rd.fail("invalid codebook or index dtype")
            if granularity == "per_channel":
                if not shape or not -len(shape) <= channel_axis < len(shape):
                    raise rd.fail(f"channel_axis {channel_axis} invalid for shape {shape}")
                rows = shape[channel_axis]
            else:
                rows = 1
            cb_itemsize = torch.empty((), dtype=cb_dtype).element_size()
            codebook = _from_bytes(rd.take(rows * k * cb_itemsize), cb_dtype, rows * k, what)
            n_kept = rd.varint()
            if n_kept > numel:
                raise rd.fail(f"{n_kept} kept entries in a tensor of {numel}")
            if n_kept and k == 0:
                raise rd.fail("kept entries but an empty codebook")
            positions, index_bits = (
                _read_positions(rd, numel, n_kept, what) if n_kept < numel else (None, None)
            )
            width = max(1, (k - 1).bit_length()) if k else 1
            codes = _read_stream(rd, width, n_kept, f"{what} code stream")
            if len(codes) != n_kept:
                raise rd.fail(f"code stream holds {len(codes)} codes, header says {n_kept}")
            if len(codes) and codes.max() >= k:
                raise rd.fail(f"code {int(codes.max())} out of range for {k} centroids")
            rec.fields.update(
                n_kept=n_kept,
                positions=positions,
                index_bits=index_bits,
                bits=bits,
                k=k,
                rows=rows,
                cb_itemsize=cb_itemsize,
            )
            if expected is not None:
                index = torch.full((numel,), k, dtype=torch.int64)
                idx = torch.arange(numel) if positions is None else torch.from_numpy(positions)
                index[idx] = torch.from_numpy(codes)
                max_code = int(index.max()) if numel else 0
                if torch.iinfo(index_dtype).max < max_code:
                    raise rd.fail(f"index dtype {index_dtype} cannot hold code {max_code}")
                prefix, _, tname = name.rpartition(".")
                base = (
                    f"{prefix}.parametrizations.{tname}" if prefix else f"parametrizations.{tname}"
                )
                state[f"{base}.original"] = codebook.reshape(
                    (rows, k) if granularity == "per_channel" else (k,)
                ).to(dtype)
                state[f"{base}.0.index"] = index.to(index_dtype).reshape(shape)
                state[f"{base}.0._extra_state"] = {
                    "bits": bits,
                    "granularity": granularity,
                    "channel_axis": channel_axis,
                    "init": init,
                    "method": method,
                    "num_centroids": k,
                }
        rec.end = rd.pos
        records.append(rec)
    rd.what = "payload"
    if rd.pos != len(payload):
        raise rd.fail(f"{len(payload) - rd.pos} bytes after the last record")
    if expected is not None:
        missing = sorted(set(expected) - {r.name for r in records})
        if missing:
            raise CompressedFileError(f"the file lacks tensors the model has: {missing}")
    return records, state


def _read(path: str | Path | BinaryIO | bytes) -> bytes:
    if isinstance(path, (bytes, bytearray, memoryview)):
        return bytes(path)
    if hasattr(path, "read"):
        return path.read()  # type: ignore[union-attr]
    return Path(path).read_bytes()


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> dense shape of every tensor a file for ``model`` may hold."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, t in model.state_dict().items():
        owner = _owner(key)
        if owner != key:
            prefix, _, name = owner.rpartition(".")
            module = model.get_submodule(prefix) if prefix else model
            shape = _dense_shape(module, name)
            if shape is not None and not key.endswith(("_orig", "_mask")):
                shapes[owner] = tuple(shape)
                continue
        if isinstance(t, Tensor):
            shapes[key] = tuple(t.shape)
    return shapes


def load_compressed(
    model: nn.Module, path: str | Path | BinaryIO | bytes, *, bake: bool = False
) -> nn.Module:
    r"""Load a compressed file into a freshly built model of the same architecture.

    The model becomes pruned and shared exactly as the saved one (same
    reparametrizations, trainable codebooks) and computes bitwise the same outputs. The
    file is checked (checksum, version, every tensor's name, shape and streams) before
    the model changes; on any problem a :class:`CompressedFileError` says what and where,
    and the model is left as it was.

    Args:
        model (nn.Module): the model to load into (changed in place).
        path (str, Path, binary file or bytes): the file.
        bake (bool): return plain weights instead of reparametrizations. Default: False.

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
    blob = _read(path)
    expected = _expected_shapes(model)
    try:
        _, state = _parse(blob, expected)
    except CompressedFileError:
        raise
    except (
        ValueError,
        TypeError,
        IndexError,
        OverflowError,
        RuntimeError,
        MemoryError,
        struct.error,
    ) as err:
        raise CompressedFileError(f"malformed file: {err}") from err
    try:
        load_state_dict(model, state)
    except CheckpointError as err:
        raise CompressedFileError(str(err)) from err
    if bake:
        bake_model(model)
    return model


# -- report ----------------------------------------------------------------------------
@dataclass
class CompressionReport:
    """Per-tensor sizes in the columns of Deep Compression's Tables 2-4.

    ``rows`` hold, per stored tensor: ``tensor``, ``weights``, ``density``, ``bits``,
    ``index_bits``, ``dense`` (fp32 bytes), ``P`` (after pruning: relative indices packed
    at their width + fp32 values), ``PQ`` (after sharing: indices + packed codes +
    codebook), ``PQH`` (after Huffman coding: the record's real bytes in the file) and
    ``ratio`` (dense / PQH). ``overhead`` is the file's preamble plus the record count;
    ``file_bytes == sum(PQH) + overhead``.
    """

    rows: list[dict[str, Any]]
    file_bytes: int
    overhead: int

    COLUMNS = (
        "tensor",
        "weights",
        "density",
        "bits",
        "index_bits",
        "dense",
        "P",
        "PQ",
        "PQH",
        "ratio",
    )

    def totals(self) -> dict[str, Any]:
        """The totals row (density over all stored entries, ratio of the sums)."""
        weights = sum(r["weights"] for r in self.rows)
        kept = sum(r["weights"] * r["density"] for r in self.rows)
        out: dict[str, Any] = {
            "tensor": "total",
            "weights": weights,
            "density": kept / weights if weights else 0.0,
            "bits": "",
            "index_bits": "",
        }
        for col in ("dense", "P", "PQ", "PQH"):
            out[col] = sum(r[col] for r in self.rows)
        out["ratio"] = out["dense"] / out["PQH"] if out["PQH"] else float("inf")
        return out

    def _formatted(self) -> list[list[str]]:
        lines = []
        for r in [*self.rows, self.totals()]:
            lines.append(
                [
                    str(r["tensor"]),
                    str(r["weights"]),
                    f"{100 * r['density']:.1f}%",
                    str(r["bits"] if r["bits"] is not None else "-"),
                    str(r["index_bits"] if r["index_bits"] is not None else "-"),
                    str(r["dense"]),
                    str(r["P"]),
                    str(r["PQ"]),
                    str(r["PQH"]),
                    f"{r['ratio']:.1f}x",
                ]
            )
        return lines

    def to_table(self) -> str:
        """A plain-text table with a totals row and the file size."""
        head = [
            "tensor",
            "weights",
            "density",
            "bits",
            "idx bits",
            "dense B",
            "P B",
            "P+Q B",
            "P+Q+H B",
            "ratio",
        ]
        body = self._formatted()
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]

        def fmt(row):
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )

        lines = [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)]
        lines.append(
            f"file: {self.file_bytes} bytes = {self.totals()['PQH']} in records + {self.overhead} header"
        )
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> None:
        """Write the rows and the totals row as CSV."""
        import csv

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.COLUMNS)
            for r in [*self.rows, self.totals()]:
                w.writerow(
                    [
                        r["tensor"],
                        r["weights"],
                        f"{r['density']:.6g}",
                        r["bits"] if r["bits"] is not None else "",
                        r["index_bits"] if r["index_bits"] is not None else "",
                        r["dense"],
                        r["P"],
                        r["PQ"],
                        r["PQH"],
                        f"{r['ratio']:.4g}",
                    ]
                )

    def to_markdown(self, path: str | Path | None = None) -> str:
        """The table as GitHub Markdown; written to ``path`` when given."""
        head = [
            "tensor",
            "weights",
            "density",
            "bits",
            "index bits",
            "dense (B)",
            "P (B)",
            "P+Q (B)",
            "P+Q+H (B)",
            "ratio",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self._formatted()]
        lines.append(f"\nFile size: {self.file_bytes} bytes ({self.overhead} bytes of header).")
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def __str__(self) -> str:
        return self.to_table()


def compression_report(
    model_or_path: nn.Module | str | Path | bytes, **save_kwargs: Any
) -> CompressionReport:
    r"""Report the compressed size of a model or file, per tensor and in total.

    Args:
        model_or_path (nn.Module, str, Path or bytes): a model (encoded in memory with
            ``save_kwargs``) or a compressed file.
        **save_kwargs: options of :func:`save_compressed` when given a model.

    Returns:
        A :class:`CompressionReport`; its ``file_bytes`` is the real file size.

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
    try:
        records, _ = _parse(blob, None)
    except CompressedFileError:
        raise
    except (
        ValueError,
        TypeError,
        IndexError,
        OverflowError,
        RuntimeError,
        MemoryError,
        struct.error,
    ) as err:
        raise CompressedFileError(f"malformed file: {err}") from err
    rows = []
    for rec in records:
        numel = int(np.prod(rec.shape, dtype=np.int64)) if rec.shape else 1
        size = rec.end - rec.start
        itemsize = torch.empty((), dtype=rec.dtype).element_size()
        dense = numel * 4 if rec.dtype.is_floating_point else numel * itemsize
        if rec.kind == RAW:
            rows.append(
                dict(
                    tensor=rec.name,
                    weights=numel,
                    density=1.0,
                    bits=None,
                    index_bits=None,
                    dense=dense,
                    P=size,
                    PQ=size,
                    PQH=size,
                    ratio=dense / size if size else 1.0,
                )
            )
            continue
        n_kept, positions = rec.fields["n_kept"], rec.fields["positions"]
        index_bits = rec.fields["index_bits"]
        gap_bytes = 0
        if positions is not None:
            # P and P+Q count the relative indices packed at the file's index width.
            gap_bytes = -(-len(_gap_symbols(positions, index_bits)) * index_bits // 8)
        p = gap_bytes + n_kept * 4
        if rec.kind == SHARED:
            k, rows_ = rec.fields["k"], rec.fields["rows"]
            width = max(1, (k - 1).bit_length()) if k else 1
            pq = gap_bytes + -(-(n_kept * width) // 8) + rows_ * k * rec.fields["cb_itemsize"]
            bits = rec.fields["bits"]
        else:
            pq, bits = p, None
        rows.append(
            dict(
                tensor=rec.name,
                weights=numel,
                density=n_kept / numel if numel else 0.0,
                bits=bits,
                index_bits=index_bits,
                dense=dense,
                P=p,
                PQ=pq,
                PQH=size,
                ratio=dense / size if size else float("inf"),
            )
        )
    overhead = len(blob) - sum(r["PQH"] for r in rows)
    return CompressionReport(rows, len(blob), overhead)
