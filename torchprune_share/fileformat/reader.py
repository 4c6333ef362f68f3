"""Reading ``.tpsc`` files: validate every byte, decode every record (layout in :mod:`.spec`).

Nothing here trusts a count in the file: every allocation is bounded by the bytes
actually present (a stream of ``b`` bytes holds at most ``8 b / width`` symbols, a
tensor's values need their bytes, positions come from a decoded stream), so a small
hostile file cannot make a reader allocate much more than its own size. Every problem
raises :class:`~.spec.CompressedFileError` naming it and the tensor.

Example:
    >>> from torchprune_share.fileformat.writer import encode_model
    >>> records, overhead = parse(encode_model(nn.Sequential(nn.Linear(2, 3))))
    >>> [(r.name, r.shape) for r in records], overhead
    ([('0.weight', (3, 2)), ('0.bias', (3,))], 21)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from .. import codec
from ..codec.wire import BoundedReader, zigzag_decode
from ..config import SharingConfig, value_of
from .spec import (
    HUFFMAN,
    INDEX_DTYPES,
    MAGIC,
    MAX_BITS,
    MAX_NUMEL,
    NUMPY_DTYPES,
    PACKED,
    PREAMBLE,
    PRUNED,
    RAW,
    SHARED,
    TORCH_DTYPES,
    VERSION,
    CompressedFileError,
    code_width,
    packed_stream_size,
)

__all__ = ["PayloadReader", "Record", "StreamInfo", "parse", "read_source"]


class PayloadReader(BoundedReader):
    """Bounds-checked reads from the payload; every failure is a CompressedFileError.

    ``what`` names the part being read (the tensor, once its name is known) for the
    messages.
    """

    def __init__(self, data: memoryview) -> None:
        super().__init__(data)
        self.what = "payload"

    def fail(self, msg: str) -> CompressedFileError:
        """The error for ``msg`` at the current position."""
        return CompressedFileError(f"{self.what}: {msg} (at payload byte {self.pos})")

    def error(self, msg: str) -> CompressedFileError:
        return self.fail(msg)

    def count(self, what: str, limit: int) -> int:
        """A varint that must not exceed ``limit`` (checked before anything is allocated)."""
        value = self.varint(what)
        if value > limit:
            raise self.fail(f"{what} {value} exceeds the possible {limit}")
        return value

    def choice(self, options: tuple, what: str) -> Any:
        """A byte code: the entry of ``options`` it indexes."""
        i = self.u8(what)
        if i >= len(options):
            raise self.fail(f"invalid {what} code {i}")
        return options[i]

    def setting(self, setting: str) -> str:
        """The value of a sharing setting's byte code (:func:`~torchprune_share.config.value_of`)."""
        code = self.u8(setting)
        try:
            return value_of(setting, code)
        except ValueError as err:
            raise self.fail(str(err)) from err


@dataclass
class StreamInfo:
    """A stream as stored: symbol count, symbol width and bytes in the file."""

    count: int
    width: int
    size: int  # bytes in the file, coding byte and lengths included

    @property
    def packed_size(self) -> int:
        """Its bytes when packed at its width (computed, not built)."""
        return packed_stream_size(self.count, self.width)


@dataclass
class Record:
    """One decoded, validated record."""

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
    config: SharingConfig | None = None  # shared: the WeightSharing's settings
    num_centroids: int = 0  # shared: k, centroids per codebook
    index_dtype: torch.dtype | None = None
    streams: list[StreamInfo] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Codebook rows: the channel count per channel, else 1."""
        if self.config is not None and self.config.granularity == "per_channel":
            return self.shape[self.config.channel_axis]
        return 1


def _read_values(rd: PayloadReader, dtype: torch.dtype, count: int, what: str) -> Tensor:
    np_dtype = NUMPY_DTYPES[dtype]
    data = rd.take(count * np_dtype.itemsize, what)
    arr = np.frombuffer(data, dtype=np_dtype, count=count).astype(np_dtype.newbyteorder("="))
    if dtype == torch.bool:
        if count and arr.max() > 1:
            raise rd.fail(f"{what}: a bool holds a byte other than 0 or 1")
        return torch.from_numpy(arr).to(torch.bool)
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _read_stream(rd: PayloadReader, rec: Record, width: int, limit: int, what: str) -> np.ndarray:
    start = rd.pos
    coding = rd.choice((PACKED, HUFFMAN), f"{what} coding")
    count = rd.count(f"{what} symbol count", limit)
    data = rd.take(rd.count(f"{what} byte length", rd.remaining), what)
    if coding == PACKED:
        # Checked before unpacking: the count is then bounded by the bytes present.
        if len(data) != codec.packed_nbytes(count, width):
            raise rd.fail(f"{what}: {len(data)} bytes for {count} packed {width}-bit symbols")
        symbols = codec.unpack_bits(data, width, count)
    else:
        if not count:
            raise rd.fail(f"{what}: empty Huffman stream")
        try:
            symbols = codec.decode(data)  # bounds its own allocations by len(data)
        except codec.CodecError as err:
            raise rd.fail(f"{what}: {err}") from err
        if len(symbols) != count:
            raise rd.fail(f"{what}: decodes to {len(symbols)} symbols, header says {count}")
        if int(symbols.max()) >> width:
            raise rd.fail(f"{what}: symbol {int(symbols.max())} does not fit {width} bits")
    rec.streams.append(StreamInfo(count, width, rd.pos - start))
    return symbols.astype(np.int64)


def _read_positions(rd: PayloadReader, rec: Record) -> None:
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


def _read_kept(rd: PayloadReader, rec: Record) -> None:
    rec.n_kept = rd.count("kept entry count", rec.numel)
    if rec.n_kept < rec.numel:
        _read_positions(rd, rec)


def _read_raw(rd: PayloadReader, rec: Record) -> None:
    rec.n_kept = rec.numel
    rec.values = _read_values(rd, rec.dtype, rec.numel, "tensor data")


def _read_pruned(rd: PayloadReader, rec: Record) -> None:
    if not rec.dtype.is_floating_point:
        raise rd.fail(f"a pruned tensor must be floating point, not {rec.dtype}")
    _read_kept(rd, rec)
    rec.values = _read_values(rd, rec.dtype, rec.n_kept, "kept values")


def _read_sharing_settings(rd: PayloadReader, rec: Record) -> None:
    settings = {"bits": rd.u8("bits"), "granularity": rd.setting("granularity")}
    settings["channel_axis"] = zigzag_decode(rd.varint("channel axis"))
    settings["init"], settings["method"] = rd.setting("init"), rd.setting("method")
    try:  # the rules of the settings live in SharingConfig alone
        rec.config = SharingConfig.from_mapping(settings)
        rec.config.check_tensor(len(rec.shape))
    except ValueError as err:
        raise rd.fail(str(err)) from err
    rec.num_centroids = rd.count("centroid count", 1 << rec.config.bits)


def _read_shared(rd: PayloadReader, rec: Record) -> None:
    if not rec.dtype.is_floating_point:
        raise rd.fail(f"a shared tensor must be floating point, not {rec.dtype}")
    _read_sharing_settings(rd, rec)
    k = rec.num_centroids
    cb_dtype = rd.choice(TORCH_DTYPES, "codebook dtype")
    rec.index_dtype = rd.choice(TORCH_DTYPES, "index dtype")
    if not cb_dtype.is_floating_point or rec.index_dtype not in INDEX_DTYPES:
        raise rd.fail(f"invalid codebook dtype {cb_dtype} or index dtype {rec.index_dtype}")
    rec.codebook = _read_values(rd, cb_dtype, rec.rows * k, "codebook")
    _read_kept(rd, rec)
    if rec.n_kept and not k:
        raise rd.fail("kept entries but an empty codebook")
    rec.codes = _read_stream(rd, rec, code_width(k), rec.n_kept, "code stream")
    if len(rec.codes) != rec.n_kept:
        raise rd.fail(f"code stream holds {len(rec.codes)} codes, header says {rec.n_kept}")
    if len(rec.codes) and int(rec.codes.max()) >= k:
        raise rd.fail(f"code {int(rec.codes.max())} out of range for {k} centroids")
    max_code = k if rec.n_kept < rec.numel else max(k - 1, 0)
    if max_code > torch.iinfo(rec.index_dtype).max:
        raise rd.fail(f"index dtype {rec.index_dtype} cannot hold code {max_code}")


_READERS = {RAW: _read_raw, PRUNED: _read_pruned, SHARED: _read_shared}


def _read_record(rd: PayloadReader, check: Callable[[Record], str | None] | None) -> Record:
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
    rec = Record(name, kind, dtype, shape, math.prod(shape))
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


def parse(
    blob: bytes, check: Callable[[Record], str | None] | None = None
) -> tuple[list[Record], int]:
    """Validate and decode a file; returns its records and the bytes outside them.

    Args:
        blob (bytes): the whole file.
        check (callable, optional): sees every record's name, kind and shape before its
            body is read and returns a problem to report, or None.

    Returns:
        ``(records, overhead)``: the records in file order and the preamble plus
        record-count bytes.

    Raises:
        CompressedFileError: anything malformed.

    Example:
        >>> parse(b"TPSC")
        Traceback (most recent call last):
        ...
        torchprune_share.fileformat.spec.CompressedFileError: file truncated: 4 bytes, ...
    """
    rd = PayloadReader(_payload(memoryview(blob)))
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


def read_source(source: str | Path | BinaryIO | bytes) -> bytes:
    """The bytes of a file given as a path, a binary file object, or bytes-like.

    Raises:
        TypeError: ``source`` is none of these.

    Example:
        >>> read_source(b"abc"), read_source(bytearray(b"d"))
        (b'abc', b'd')
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if callable(getattr(source, "read", None)):
        data = source.read()  # type: ignore[union-attr]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"the file object must be binary, it read {type(data).__name__}")
        return bytes(data)
    if isinstance(source, (str, Path)) or hasattr(source, "__fspath__"):
        return Path(source).read_bytes()
    raise TypeError(f"expected a path, a binary file or bytes, got {type(source).__name__}")
