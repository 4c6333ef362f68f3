"""Reading a Huffman stream's header and decoding its payload in lock-step (numpy only).

The decoding half of :mod:`torchprune_share.codec.huffman` (whose docstring gives the
byte layout): :class:`HeaderReader`, the readers of the alphabet, code lengths and chunk
table, each checking every count against the bytes present, and :func:`lockstep`,
which decodes all chunks at once through one ``2**L``-entry table.

Example:
    >>> from torchprune_share.codec import encode
    >>> rd = HeaderReader(encode(np.array([3, 3, 4])), 7)
    >>> rd.varint("n"), rd.varint("k"), rd.u8("L"), read_alphabet(rd, 2).tolist()
    (3, 2, 1, [3, 4])
"""

from __future__ import annotations

import numpy as np

from . import CodecError
from .bitpack import unpack_bits
from .prefix_code import MAX_SYMBOL, canonical_code
from .wire import BoundedReader

__all__ = [
    "LEN_BITS",
    "MAX_CHUNK_LOG2",
    "MIN_CHUNK_LOG2",
    "HeaderReader",
    "length_width",
    "lockstep",
    "read_alphabet",
    "read_chunks",
    "read_lengths",
]

MIN_CHUNK_LOG2 = 4
MAX_CHUNK_LOG2 = 16
LEN_BITS = 5  # table entries are (rank << 5) | code length


def length_width(L: int) -> int:
    """Bits per stored code length when the longest code is ``L`` bits."""
    return max(1, (L - 1).bit_length())


class HeaderReader(BoundedReader):
    """A Huffman stream's header cursor; every failure is a CodecError."""

    def error(self, msg: str) -> CodecError:
        return CodecError(msg)

    def truncated(self, what: str, nbytes: int) -> CodecError:
        return CodecError(f"truncated Huffman stream: ran out of bytes reading {what}")

    def overlong(self, what: str) -> CodecError:
        return CodecError(f"corrupt Huffman header: varint for {what} exceeds 9 bytes")

    def packed(self, count: int, width: int, what: str) -> np.ndarray:
        nbytes = (count * width + 7) // 8
        return unpack_bits(self.take(nbytes, what), width, count)


def read_alphabet(rd: HeaderReader, k: int) -> np.ndarray:
    runs = rd.varint("alphabet run count")
    if not 1 <= runs <= k:
        raise CodecError(f"corrupt Huffman header: {runs} alphabet runs for {k} symbols")
    pairs = rd.varints(2 * runs, "alphabet runs")
    gaps = pairs[0::2]
    run_len = pairs[1::2] + np.uint64(1)  # < 2**63 + 1, no wrap
    if int(run_len.max()) > k or int(run_len.sum()) != k:
        raise CodecError(f"corrupt Huffman header: alphabet runs do not add up to {k} symbols")
    # Largest symbol = sum(gaps) + k - 1; check it without uint64 wrap-around.
    if int(gaps.max()) >= 1 << 40:
        biggest = sum(int(g) for g in gaps.tolist()) + k - 1
    else:
        biggest = int(gaps.sum()) + k - 1
    if biggest > MAX_SYMBOL:
        raise CodecError("corrupt Huffman header: alphabet symbol exceeds 2**63 - 1")
    run_len = run_len.astype(np.int64)
    before = np.cumsum(run_len) - run_len  # symbols in earlier runs
    first = np.cumsum(gaps) + before.astype(np.uint64)  # first value of each run
    return np.repeat(first - before.astype(np.uint64), run_len) + np.arange(k, dtype=np.uint64)


def read_lengths(rd: HeaderReader, k: int, L: int) -> np.ndarray:
    w = length_width(L)
    mode = rd.u8("code length mode")
    if mode == 0:
        lengths = rd.packed(k, w, "code lengths").astype(np.int64) + 1
    elif mode == 1:
        runs = rd.varint("code length run count")
        if not 1 <= runs <= k:
            raise CodecError(f"corrupt Huffman header: {runs} code length runs for {k} symbols")
        values = rd.packed(runs, w, "code length runs").astype(np.int64) + 1
        run_len = rd.varints(runs, "code length runs") + np.uint64(1)
        if int(run_len.max()) > k or int(run_len.sum()) != k:
            raise CodecError(
                f"corrupt Huffman header: code length runs do not add up to {k} symbols"
            )
        lengths = np.repeat(values, run_len.astype(np.int64))
    else:
        raise CodecError(f"corrupt Huffman header: unknown code length mode {mode}")
    if int(lengths.max()) != L:
        raise CodecError(
            f"corrupt Huffman header: longest code is {int(lengths.max())} bits, header says {L}"
        )
    kraft = int(np.sum(np.left_shift(np.int64(1), L - lengths)))
    if kraft != 1 << L:
        state = "over-subscribed" if kraft > 1 << L else "incomplete"
        raise CodecError(f"invalid code lengths: {state} prefix code (Kraft sum {kraft}/2**{L})")
    return lengths


def read_chunks(rd: HeaderReader, n: int, L: int) -> tuple[int, np.ndarray]:
    chunk_log2 = rd.u8("chunk size")
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
        raise CodecError(f"corrupt Huffman header: chunk size 2**{chunk_log2} out of range")
    chunk = 1 << chunk_log2
    n_chunks = -(-n // chunk)
    if n_chunks == 1:
        return chunk, np.zeros(0, dtype=np.int64)
    base = rd.varint("chunk table base")
    width = rd.u8("chunk table width")
    if width > 32:
        raise CodecError(f"corrupt Huffman header: chunk table width {width} > 32")
    if base > chunk * L:
        raise CodecError("corrupt Huffman header: chunk bit length exceeds chunk * max length")
    if width:
        bits = rd.packed(n_chunks - 1, width, "chunk table").astype(np.int64) + base
    else:
        bits = np.full(n_chunks - 1, base, dtype=np.int64)
    # Every symbol costs 1..L bits, which also keeps the decoder's reads in bounds.
    if int(bits.min()) < chunk or int(bits.max()) > chunk * L:
        raise CodecError("corrupt Huffman header: chunk bit length out of range")
    return chunk, bits


def lockstep(
    payload: np.ndarray,
    total_bits: int,
    n: int,
    L: int,
    lengths: np.ndarray,
    chunk: int,
    chunk_bits: np.ndarray,
) -> np.ndarray:
    """Decode all chunks in parallel; return the alphabet rank of every symbol."""
    n_chunks = chunk_bits.size + 1
    starts = np.zeros(n_chunks, dtype=np.int64)
    np.cumsum(chunk_bits, out=starts[1:])
    last_count = n - (n_chunks - 1) * chunk
    last_bits = total_bits - int(starts[-1])
    if not last_count <= last_bits <= last_count * L:
        raise CodecError(
            "corrupt Huffman stream: chunk offsets inconsistent with the payload length"
        )

    order, code_starts = canonical_code(lengths, L)
    entries = (order.astype(np.uint32) << LEN_BITS) | lengths[order].astype(np.uint32)
    # Kraft equality was checked, so the ranges tile exactly 2**L entries.
    table = np.repeat(entries, np.diff(code_starts, append=1 << L))

    # Reads go at most chunk * L bits past a chunk start; zero padding keeps every
    # 8-byte window in bounds (the last chunk keeps stepping after its last symbol).
    pad = (chunk * L + 7) // 8 + 16
    padded = np.zeros(payload.size + pad + 8, dtype=np.uint8)
    padded[: payload.size] = payload
    # windows[j] = the 8 bytes starting at byte j as a big-endian integer.
    windows = np.ndarray((payload.size + pad,), dtype=">u8", buffer=padded, strides=(1,))
    windows = windows.astype(np.uint64)

    steps = chunk if n_chunks > 1 else n
    out = np.empty((steps, n_chunks), dtype=np.uint32)
    pos = starts.copy()
    pos_u = pos.view(np.uint64)
    byte = np.empty(n_chunks, dtype=np.int64)
    shift = np.empty(n_chunks, dtype=np.uint64)
    peek = np.empty(n_chunks, dtype=np.uint64)
    peek_i = peek.view(np.int64)
    step_len = np.empty(n_chunks, dtype=np.uint32)
    drop = np.uint64(64 - L)
    seven = np.uint64(7)
    last_end = -1
    for t in range(steps):
        np.right_shift(pos, 3, out=byte)
        np.take(windows, byte, out=peek, mode="clip")
        np.bitwise_and(pos_u, seven, out=shift)
        np.left_shift(peek, shift, out=peek)
        np.right_shift(peek, drop, out=peek)
        row = out[t]
        np.take(table, peek_i, out=row, mode="clip")
        np.bitwise_and(row, 31, out=step_len)
        np.add(pos, step_len, out=pos)
        if t + 1 == last_count:
            last_end = int(pos[-1])

    if n_chunks > 1 and not np.array_equal(pos[:-1], starts[1:]):
        bad = int(np.flatnonzero(pos[:-1] != starts[1:])[0])
        raise CodecError(
            f"corrupt Huffman payload: chunk {bad} ends at bit {int(pos[bad])}, "
            f"expected {int(starts[bad + 1])}"
        )
    if last_end != total_bits:
        raise CodecError(
            f"corrupt Huffman payload: decoding ends at bit {last_end}, expected {total_bits}"
        )
    out >>= LEN_BITS
    return out.T
