"""Canonical, length-limited Huffman coding of non-negative integer streams (numpy only).

The alphabet is whatever distinct values occur in the stream (any non-negative
integers ``< 2**63``, at most ``2**max_len`` distinct ones, so ``2**20`` with the
defaults). Code lengths are optimal under the length limit (package-merge); when the
limit does not bind they cost exactly as much as an unconstrained Huffman code.

Everything is vectorised: encoding is a per-symbol table lookup, a ``cumsum`` for bit
positions and an OR-reduction into 64-bit words; decoding splits the payload into
independent chunks (their bit offsets are stored in the header) and decodes all
chunks in lock-step, one symbol per chunk per step, with a single ``2**L``-entry
lookup table (``L`` = longest code, ``<= 20``, so the table is at most 4 MiB).

Byte layout of :func:`encode`'s output (``varint`` = unsigned LEB128, at most 9 bytes;
``packed(w)`` = :func:`~torchprune_share.codec.bitpack.pack_bits` with width ``w``)::

    offset 0  b"HF"               magic
           2  u8   version        = 1
           3  u32  crc            CRC-32 (zlib, little-endian) of every byte from offset 7 on
           7  varint n            number of symbols; n == 0 ends the stream here
              varint k            alphabet size, 1 <= k <= n
              u8   L              longest code length, 1..20 (1 when k == 1)
              alphabet            the k distinct symbols, ascending, as runs of consecutive
                                  values: varint R, then R pairs (varint gap, varint len-1)
                                  where gap = first value - (previous run's last value + 1)
                                  (previous = -1 before the first run)
              -- only when k >= 2 --
              lengths             code length of each alphabet symbol (same order):
                                  u8 mode 0: packed(w)(length - 1)   for all k symbols
                                  u8 mode 1: varint R, packed(w)(run value - 1),
                                             R x varint (run length - 1)
                                  with w = max(1, bit_length(L - 1))
              u8   chunk_log2     chunk = 2**chunk_log2 symbols (4..16)
              chunk table         only when there are c = ceil(n / chunk) >= 2 chunks: bit
                                  lengths of chunks 0..c-2 as varint base, u8 width,
                                  packed(width)(length - base) (nothing if width == 0)
              --
              varint B            payload length in bits
              payload             ceil(B / 8) bytes, nothing after it

The payload is the concatenation of the codewords, **most significant bit first**
(stream bit ``i`` is bit ``7 - i % 8`` of byte ``i // 8``; the last byte is
zero-padded). This is the opposite of :mod:`bitpack`'s order because canonical codes
read MSB-first map onto contiguous ranges of the decoding table. Codes are canonical:
sorted by (length, symbol), consecutive integers, left-aligned.

A stream with a single distinct symbol uses a 1-bit code (``"0"``), so its payload is
``n`` zero bits: this keeps every stream's symbol count bounded by its payload size,
which lets :func:`decode` refuse headers that claim more symbols than the bytes can
hold before allocating anything.

The header reader and the lock-step decoder live in
:mod:`~torchprune_share.codec.huffman_decoder`, the code lengths in
:mod:`~torchprune_share.codec.prefix_code`, varints in :mod:`~torchprune_share.codec.wire`.
"""

from __future__ import annotations

import zlib

import numpy as np

from . import CodecError
from .bitpack import pack_bits
from .huffman_decoder import (
    MAX_CHUNK_LOG2,
    MIN_CHUNK_LOG2,
    HeaderReader,
    length_width,
    lockstep,
    read_alphabet,
    read_chunks,
    read_lengths,
)
from .prefix_code import (
    DEFAULT_MAX_LEN,
    MAX_CODE_LEN,
    SymbolHistogram,
    as_symbols,
    canonical_code,
    check_max_len,
    code_lengths,
    encoded_size_bits,
)
from .wire import as_uint8, encode_varint, encode_varints, unsigned_dtype

__all__ = [
    "DEFAULT_MAX_LEN",
    "MAX_CODE_LEN",
    "code_lengths",
    "decode",
    "encode",
    "encoded_size_bits",
]

_MAGIC = b"HF"
_VERSION = 1
_FIXED = 7  # magic + version + crc


# ----------------------------------------------------------------------------- encoder


def _auto_chunk_log2(n: int) -> int:
    # Balances decode steps (= chunk size, each a few numpy calls) against header
    # bytes (one offset per chunk): ~sqrt(64 n), clamped to 64..4096 symbols.
    return int(np.clip(round(np.log2(64.0 * n) / 2), 6, 12))


def _scatter_msb(top: np.ndarray, lens: np.ndarray) -> tuple[bytes, int, np.ndarray]:
    """Concatenate left-aligned codewords MSB-first.

    Args:
        top: ``uint64`` codewords shifted so their first bit is bit 63. Overwritten.
        lens: ``uint8`` code lengths (``<= 20``).

    Returns:
        ``(payload, total_bits, starts)`` where ``starts`` is the first bit of every
        codeword (``uint64``).
    """
    # Work in place where possible: this runs on every weight of a layer, so peak
    # memory matters more than a few extra passes (about 18 bytes per symbol).
    starts = np.cumsum(lens, dtype=np.uint64)
    total = int(starts[-1])
    starts -= lens
    sh = np.empty(starts.size, dtype=np.uint8)
    np.bitwise_and(starts, np.uint64(63), out=sh, casting="unsafe")
    n_words = int(starts[-1] >> np.uint64(6)) + 1
    # Codes are < 64 bits, so every word up to the last start holds a code start.
    first = np.searchsorted(starts, np.arange(n_words, dtype=np.uint64) << np.uint64(6))
    last = np.empty(n_words, dtype=np.int64)
    last[:-1] = first[1:] - 1
    last[-1] = top.size - 1
    # Only the last code starting in a word can spill into the next one; the spilled
    # bits are x << (64 - s), written as (x << 1) << (63 - s) to avoid a shift by 64.
    spill = (top[last] << np.uint64(1)) << (np.uint64(63) - sh[last])
    np.right_shift(top, sh, out=top)
    words = np.zeros(n_words + 1, dtype=np.uint64)
    words[:n_words] = np.bitwise_or.reduceat(top, first)
    words[1:] |= spill
    payload = words.astype(">u8").tobytes()[: (total + 7) // 8]
    return payload, total, starts


def _encode_alphabet(alphabet: np.ndarray) -> bytes:
    k = alphabet.size
    a = alphabet.astype(np.uint64)
    brk = np.flatnonzero(np.diff(a) != 1) + 1
    run_start = np.concatenate([[0], brk]).astype(np.int64)
    run_end = np.concatenate([brk, [k]]).astype(np.int64)
    first = a[run_start]
    prev_next = np.zeros(run_start.size, dtype=np.uint64)
    prev_next[1:] = a[run_end[:-1] - 1] + np.uint64(1)
    pairs = np.empty(2 * run_start.size, dtype=np.uint64)
    pairs[0::2] = first - prev_next
    pairs[1::2] = (run_end - run_start - 1).astype(np.uint64)
    return encode_varint(run_start.size) + encode_varints(pairs)


def _encode_lengths(lengths: np.ndarray, L: int) -> bytes:
    w = length_width(L)
    flat = b"\x00" + pack_bits(lengths - 1, w)
    change = np.flatnonzero(np.diff(lengths)) + 1
    run_start = np.concatenate([[0], change]).astype(np.int64)
    run_len = np.diff(np.concatenate([run_start, [lengths.size]]))
    rle = (
        b"\x01"
        + encode_varint(run_start.size)
        + pack_bits(lengths[run_start] - 1, w)
        + encode_varints(run_len - 1)
    )
    return rle if len(rle) < len(flat) else flat


def _chunk_log2(chunk_size: int | None, n: int) -> int:
    if chunk_size is None:
        return _auto_chunk_log2(max(n, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be None or an int, got {type(chunk_size).__name__}")
    if (
        chunk_size <= 0
        or chunk_size & (chunk_size - 1)
        or not MIN_CHUNK_LOG2 <= int(chunk_size).bit_length() - 1 <= MAX_CHUNK_LOG2
    ):
        raise ValueError(
            f"chunk_size must be a power of two in {1 << MIN_CHUNK_LOG2}.."
            f"{1 << MAX_CHUNK_LOG2}, got {chunk_size!r}"
        )
    return int(chunk_size).bit_length() - 1


def _chunk_table(starts: np.ndarray, chunk: int, n: int) -> bytes:
    """Header bytes giving the bit length of every chunk but the last."""
    n_chunks = -(-n // chunk)
    if n_chunks < 2:
        return b""
    bounds = starts[chunk : (n_chunks - 1) * chunk + 1 : chunk].astype(np.int64)
    chunk_bits = np.diff(bounds, prepend=0)
    base = int(chunk_bits.min())
    width = (int(chunk_bits.max()) - base).bit_length()
    table = encode_varint(base) + bytes([width])
    return table + (pack_bits(chunk_bits - base, width) if width else b"")


def encode(
    symbols: np.ndarray, *, max_len: int = DEFAULT_MAX_LEN, chunk_size: int | None = None
) -> bytes:
    """Huffman-encode a stream of non-negative integers into a self-contained byte string.

    Args:
        symbols: integer (or bool) array of any shape, flattened in C order; values in
            ``[0, 2**63)`` with at most ``2**max_len`` distinct values.
        max_len: code length limit, ``1..20``. Smaller limits make the decoding table
            smaller at a (usually negligible) cost in size.
        chunk_size: symbols per independently decodable chunk, a power of two in
            ``16..65536``; ``None`` picks ``~sqrt(64 n)`` clamped to ``64..4096``.
            Decoding runs ``chunk_size`` vectorised steps; each chunk costs a few
            bits of header.

    Returns:
        The encoded stream (layout in the module docstring). An empty input encodes to
        8 bytes; a single distinct symbol costs 1 bit per symbol.

    Raises:
        TypeError: a non-integer dtype, or ``max_len`` / ``chunk_size`` not an int.
        ValueError: negative or too large symbols, too many distinct symbols for
            ``max_len``, or a ``chunk_size`` out of range.

    Example:
        >>> data = encode(np.array([5, 5, 5, 5, 9, 5, 7]))
        >>> decode(data).tolist()
        [5, 5, 5, 5, 9, 5, 7]
    """
    max_len = check_max_len(max_len)
    sym = as_symbols(symbols)
    n = sym.size
    chunk_log2 = _chunk_log2(chunk_size, n)

    body = bytearray(encode_varint(n))
    if n == 0:
        return _seal(body)
    hist = SymbolHistogram(sym)
    k = hist.alphabet.size
    lengths = code_lengths(hist.counts, max_len)
    L = int(lengths.max())
    body += encode_varint(k)
    body.append(L)
    body += _encode_alphabet(hist.alphabet)
    if k == 1:
        body += encode_varint(n)
        body += bytes((n + 7) // 8)
        return _seal(body)

    body += _encode_lengths(lengths, L)
    order, code_starts = canonical_code(lengths, L)
    top_by_rank = np.empty(k, dtype=np.uint64)
    top_by_rank[order] = code_starts.astype(np.uint64) << np.uint64(64 - L)
    top = hist.gather(top_by_rank)
    lens = hist.gather(lengths)
    del hist
    payload, total, starts = _scatter_msb(top, lens)
    del top, lens

    body.append(chunk_log2)
    body += _chunk_table(starts, 1 << chunk_log2, n)
    body += encode_varint(total)
    body += payload
    return _seal(body)


def _seal(body: bytearray) -> bytes:
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return _MAGIC + bytes([_VERSION]) + crc.to_bytes(4, "little") + bytes(body)


# ----------------------------------------------------------------------------- decoder


def decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode a stream produced by :func:`encode`.

    Safe on arbitrary input: either returns exactly what was encoded or raises
    :class:`~torchprune_share.codec.CodecError`. Allocations are bounded by the size
    of ``data`` (plus a decoding table of at most ``2**20`` entries).

    Args:
        data: the encoded bytes (``bytes``, ``bytearray``, ``memoryview`` or a ``uint8``
            array), exactly one stream with nothing after it.

    Returns:
        1-D array of the symbols with the smallest unsigned dtype that holds the
        largest symbol (``uint8``, ``uint16``, ``uint32`` or ``uint64``); ``uint8``
        when empty.

    Raises:
        CodecError: bad magic/version, truncated or trailing bytes, checksum mismatch,
            inconsistent header (counts, alphabet, code lengths, chunk table) or a
            payload that does not decode to exactly the recorded layout.
        TypeError: ``data`` is not bytes-like.

    Example:
        >>> decode(encode(np.array([1, 1, 2, 3]))).tolist()
        [1, 1, 2, 3]
    """
    buf = as_uint8(data)
    if buf.size < _FIXED:
        raise CodecError(
            f"truncated Huffman stream: {buf.size} bytes, the fixed header alone is {_FIXED}"
        )
    if buf[:2].tobytes() != _MAGIC:
        raise CodecError(f"not a Huffman stream: bad magic {buf[:2].tobytes()!r}")
    if int(buf[2]) != _VERSION:
        raise CodecError(f"unsupported Huffman stream version {int(buf[2])}")
    stored_crc = int.from_bytes(buf[3:_FIXED].tobytes(), "little")

    rd = HeaderReader(buf, _FIXED)
    n = rd.varint("symbol count")
    if n == 0:
        _check_tail(rd, buf, stored_crc, 0)
        return np.zeros(0, dtype=np.uint8)
    # Every symbol takes at least one payload bit: refuse impossible counts before
    # allocating anything proportional to them.
    if n > 8 * buf.size:
        raise CodecError(
            f"corrupt Huffman header: {n} symbols cannot fit in a {buf.size}-byte stream"
        )
    k = rd.varint("alphabet size")
    if not 1 <= k <= min(n, 1 << MAX_CODE_LEN):
        raise CodecError(f"corrupt Huffman header: alphabet size {k} for {n} symbols")
    L = rd.u8("max code length")
    if not 1 <= L <= MAX_CODE_LEN or k > 1 << L or (k == 1 and L != 1):
        raise CodecError(f"corrupt Huffman header: max code length {L} for {k} symbols")
    alphabet = read_alphabet(rd, k)
    dtype = unsigned_dtype(int(alphabet[-1]))

    if k == 1:
        _check_single(rd, buf, stored_crc, n)
        return np.full(n, alphabet[0], dtype=dtype)

    lengths = read_lengths(rd, k, L)
    chunk, chunk_bits = read_chunks(rd, n, L)
    total_bits = rd.varint("payload bit count")
    if not n <= total_bits <= n * L:
        raise CodecError(
            f"corrupt Huffman header: {total_bits} payload bits for {n} symbols of 1..{L} bits"
        )
    payload = _check_tail(rd, buf, stored_crc, total_bits)
    ranks = lockstep(payload, total_bits, n, L, lengths, chunk, chunk_bits)
    if alphabet[0] == 0 and int(alphabet[-1]) == k - 1:  # dense alphabet: rank == symbol
        flat = ranks.astype(dtype, order="C").reshape(-1)
    else:
        flat = alphabet.astype(dtype)[ranks].reshape(-1)
    return flat[:n]


def _check_single(rd: HeaderReader, buf: np.ndarray, stored_crc: int, n: int) -> None:
    """Check the rest of a single-symbol stream: ``n`` zero bits."""
    total_bits = rd.varint("payload bit count")
    if total_bits != n:
        raise CodecError(f"corrupt Huffman header: {total_bits} payload bits for {n} one-bit codes")
    payload = _check_tail(rd, buf, stored_crc, total_bits)
    if payload.any():
        raise CodecError("corrupt Huffman payload: non-zero bit in a single-symbol stream")


def _check_tail(rd: HeaderReader, buf: np.ndarray, stored_crc: int, total_bits: int) -> np.ndarray:
    """Check payload size, checksum and padding; return the payload bytes."""
    nbytes = (total_bits + 7) // 8
    if rd.remaining < nbytes:
        raise CodecError(
            f"truncated Huffman stream: payload needs {nbytes} bytes, got {rd.remaining}"
        )
    if rd.remaining > nbytes:
        raise CodecError(
            f"corrupt Huffman stream: {rd.remaining - nbytes} trailing bytes after the payload"
        )
    crc = zlib.crc32(buf[_FIXED:]) & 0xFFFFFFFF
    if crc != stored_crc:
        raise CodecError(
            f"corrupt Huffman stream: checksum mismatch (stored {stored_crc:#010x}, "
            f"computed {crc:#010x})"
        )
    payload = buf[rd.pos :]
    if total_bits % 8 and int(payload[-1]) & ((1 << (8 - total_bits % 8)) - 1):
        raise CodecError("corrupt Huffman payload: non-zero padding bits")
    return payload
