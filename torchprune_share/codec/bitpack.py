"""Fixed-width bit packing of non-negative integers (numpy only).

Bit order
---------
The packed stream is **little-endian at the bit level**, the same convention as
DEFLATE and ``np.packbits(..., bitorder="little")``:

* stream bit ``k`` is bit ``k % 8`` (value ``1 << (k % 8)``) of byte ``k // 8``;
* value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least
  significant bit first.

So with ``bits=3`` the values ``[1, 2, 7]`` become the bit string
``100 010 111`` (stream order) and the bytes ``0b11010001, 0b00000001``.
The final byte is zero-padded; ``len(pack_bits(v, b)) == ceil(len(v) * b / 8)``.

Both directions are fully vectorised: packing ORs every value into the 64-bit
word(s) it overlaps with ``np.bitwise_or.reduceat`` (values never straddle more
than two words because ``bits <= 32``); unpacking gathers an unaligned 64-bit
window at each value's first byte.
"""

from __future__ import annotations

import numpy as np

from . import CodecError
from .wire import as_uint8, unsigned_dtype

__all__ = ["pack_bits", "packed_nbytes", "unpack_bits"]

_MAX_BITS = 32


def _check_bits(bits: int) -> int:
    # bool is an int subclass; ``bits=True`` is almost certainly a bug.
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int in 1..{_MAX_BITS}, got {type(bits).__name__}")
    bits = int(bits)
    if not 1 <= bits <= _MAX_BITS:
        raise ValueError(f"bits must be in 1..{_MAX_BITS}, got {bits}")
    return bits


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"count must be a non-negative int, got {type(count).__name__}")
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    return count


def packed_nbytes(count: int, bits: int) -> int:
    """Number of bytes :func:`pack_bits` produces for ``count`` values of width ``bits``.

    Args:
        count: number of values (``>= 0``).
        bits: bit width of each value, ``1..32``.

    Returns:
        ``ceil(count * bits / 8)``.

    Example:
        >>> packed_nbytes(10, 5)
        7
    """
    count = _check_count(count)
    bits = _check_bits(bits)
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers into a dense little-endian bit stream.

    Args:
        values: integer (or bool) array of any shape, flattened in C order. Every
            element must satisfy ``0 <= v < 2**bits``.
        bits: bit width of each value, ``1..32``.

    Returns:
        ``ceil(values.size * bits / 8)`` bytes; see the module docstring for the
        bit order. The unused high bits of the last byte are zero.

    Raises:
        TypeError: ``bits`` is not an int, or ``values`` has a non-integer dtype.
        ValueError: ``bits`` is out of range, or an element is negative or
            ``>= 2**bits``.

    Example:
        >>> pack_bits(np.array([1, 2, 7]), 3)
        b'\\xd1\\x01'
    """
    bits = _check_bits(bits)
    arr = np.asarray(values)
    n = arr.size
    if n == 0:  # np.asarray([]) is float64; nothing to validate anyway
        return b""
    if arr.dtype.kind not in "biu":
        raise TypeError(f"values must have an integer dtype, got {arr.dtype}")
    arr = arr.ravel()
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ValueError(f"values must be non-negative, got minimum {int(arr.min())}")
    vmax = int(arr.max())
    if vmax >> bits:
        raise ValueError(f"values must be < 2**bits = {1 << bits}, got maximum {vmax}")

    nbytes = (n * bits + 7) // 8
    if bits in (8, 16, 32):
        # Byte-aligned widths are just a little-endian cast.
        return arr.astype(f"<u{bits // 8}").tobytes()

    v = arr.astype(np.uint64)
    # Bit offsets within 64-bit words repeat every 64 values (64 * bits bits is a
    # whole number of words), so the shifts are a tiled uint8 pattern.
    groups = -(-n // 64)
    sh = np.tile(((np.arange(64) * bits) & 63).astype(np.uint8), groups)[:n]
    # Every 64-bit word up to the last start holds at least one value start
    # (bits <= 32 < 64), and the first value starting in word w is ceil(64w/bits).
    n_words = int((n - 1) * bits >> 6) + 1
    first = (np.arange(n_words, dtype=np.int64) * 64 + (bits - 1)) // bits
    last = np.empty(n_words, dtype=np.int64)
    last[:-1] = first[1:] - 1
    last[-1] = n - 1
    # Only the value just before a word's first start can straddle into it; its
    # spilled bits are v >> (64 - s), written as (v >> 1) >> (63 - s) to avoid an
    # (undefined) shift by 64.
    spill = (v[last] >> np.uint64(1)) >> (np.uint64(63) - sh[last])
    np.left_shift(v, sh, out=v)  # bits pushed past bit 63 are the spill
    words = np.zeros(n_words + 1, dtype=np.uint64)
    words[:n_words] = np.bitwise_or.reduceat(v, first)
    words[1:] |= spill
    return words.astype("<u8").tobytes()[:nbytes]


def unpack_bits(data: bytes | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack ``count`` values of width ``bits`` written by :func:`pack_bits`.

    Args:
        data: the packed bytes (``bytes``, ``bytearray``, ``memoryview`` or a
            ``uint8`` array). Bytes after the first ``ceil(count * bits / 8)`` are
            ignored, so a value stream can be read out of a larger buffer.
        bits: bit width of each value, ``1..32``.
        count: number of values to read (``>= 0``).

    Returns:
        1-D array of ``count`` values with the smallest sufficient unsigned dtype:
        ``uint8`` for ``bits <= 8``, ``uint16`` for ``bits <= 16``, else ``uint32``.

    Raises:
        CodecError: ``data`` is shorter than ``ceil(count * bits / 8)`` bytes.
        ValueError: ``bits`` or ``count`` is out of range.
        TypeError: ``bits`` or ``count`` is not an int, or ``data`` is not bytes-like /
            not a ``uint8`` array.

    Example:
        >>> unpack_bits(b"\\xd1\\x01", 3, 3)
        array([1, 2, 7], dtype=uint8)
    """
    bits = _check_bits(bits)
    count = _check_count(count)
    buf = as_uint8(data)
    nbytes = (count * bits + 7) // 8
    if buf.size < nbytes:
        raise CodecError(
            f"bit-packed data truncated: {count} values of {bits} bits need "
            f"{nbytes} bytes, got {buf.size}"
        )
    dtype = unsigned_dtype((1 << bits) - 1)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    if bits in (8, 16, 32):
        return np.frombuffer(buf[:nbytes].tobytes(), dtype=f"<u{bits // 8}").astype(dtype)

    # Zero-pad so the 8-byte window at every value's first byte is in bounds.
    padded = np.zeros(nbytes + 8, dtype=np.uint8)
    padded[:nbytes] = buf[:nbytes]
    # Overlapping view: element j is the little-endian uint64 at byte offset j.
    windows = np.ndarray((nbytes + 1,), dtype="<u8", buffer=padded, strides=(1,))
    # The byte offset / shift pattern repeats every 8 values (= `bits` bytes).
    groups = (count + 7) // 8
    lane = np.arange(8, dtype=np.int64) * bits
    byte = (np.arange(groups, dtype=np.int64)[:, None] * bits + (lane >> 3)[None, :]).ravel()
    shift = np.tile((lane & 7).astype(np.uint64), groups)
    vals = windows[byte[:count]].astype(np.uint64, copy=False)
    vals >>= shift[:count]
    vals &= np.uint64((1 << bits) - 1)
    return vals.astype(dtype)
