"""Wire primitives shared by the Huffman codec and the compressed model file (numpy only).

* unsigned LEB128 varints of at most :data:`MAX_VARINT_BYTES` bytes (so values
  ``< 2**63``): :func:`encode_varint`, :func:`encode_varints` (vectorised) and
  zigzag for signed values (:func:`zigzag_encode`, :func:`zigzag_decode`);
* :class:`BoundedReader`, a cursor that checks every read against the bytes present,
  so a reader built on it can never be made to read, or size an allocation, past the
  end of its input; subclasses choose the exception and the messages;
* :func:`as_uint8` (bytes-like to a ``uint8`` array) and :func:`unsigned_dtype`.

Example:
    >>> encode_varint(300)
    b'\\xac\\x02'
    >>> rd = BoundedReader(encode_varints(np.array([300, 1, 2**62])))
    >>> rd.varint("a"), rd.varints(2, "b").tolist(), rd.remaining
    (300, [1, 4611686018427387904], 0)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAX_VARINT_BYTES",
    "VARINT_LIMIT",
    "BoundedReader",
    "as_uint8",
    "encode_varint",
    "encode_varints",
    "unsigned_dtype",
    "zigzag_decode",
    "zigzag_encode",
]

#: Longest varint a reader accepts: 9 bytes of 7 bits hold every value below 2**63.
MAX_VARINT_BYTES = 9
#: Every varint is below this.
VARINT_LIMIT = 1 << 63


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value``.

    Args:
        value (int): in ``[0, 2**63)``.

    Returns:
        1 to 9 bytes, 7 bits each, least significant group first; the high bit of every
        byte but the last is set.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is negative or ``>= 2**63``.

    Example:
        >>> encode_varint(0), encode_varint(127), encode_varint(128)
        (b'\\x00', b'\\x7f', b'\\x80\\x01')
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"value must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < VARINT_LIMIT:
        raise ValueError(f"value must be in [0, 2**63), got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_varints(values: np.ndarray) -> bytes:
    """Vectorised :func:`encode_varint` of an array of values in ``[0, 2**63)``.

    Args:
        values (array-like): non-negative integers below ``2**63`` (flattened).

    Returns:
        The varints one after the other.

    Example:
        >>> encode_varints(np.array([1, 300])) == encode_varint(1) + encode_varint(300)
        True
    """
    v = np.asarray(values).astype(np.uint64).ravel()
    if v.size == 0:
        return b""
    nb = np.ones(v.size, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        nb += v >= np.uint64(1 << (7 * j))
    starts = np.cumsum(nb) - nb
    group = np.repeat(np.arange(v.size), nb)
    off = np.arange(int(nb.sum()), dtype=np.int64) - starts[group]
    byte = (v[group] >> (7 * off).astype(np.uint64)) & np.uint64(0x7F)
    byte |= (off < nb[group] - 1).astype(np.uint64) << np.uint64(7)
    return byte.astype(np.uint8).tobytes()


def zigzag_encode(value: int) -> int:
    """Map a signed int to an unsigned one: 0, -1, 1, -2, ... to 0, 1, 2, 3, ...

    Example:
        >>> [zigzag_encode(v) for v in (0, -1, 1, -2)]
        [0, 1, 2, 3]
    """
    return 2 * value if value >= 0 else -2 * value - 1


def zigzag_decode(z: int) -> int:
    """Inverse of :func:`zigzag_encode`.

    Example:
        >>> [zigzag_decode(z) for z in (0, 1, 2, 3)]
        [0, -1, 1, -2]
    """
    return z >> 1 if z % 2 == 0 else -(z >> 1) - 1


def as_uint8(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A flat ``uint8`` view of bytes-like ``data`` (no copy where possible).

    Args:
        data (bytes, bytearray, memoryview or numpy.ndarray): an array must have
            dtype ``uint8``.

    Returns:
        1-D ``uint8`` array.

    Raises:
        TypeError: ``data`` is not bytes-like or not a ``uint8`` array.

    Example:
        >>> as_uint8(b"ab").tolist()
        [97, 98]
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"data array must have dtype uint8, got {data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None


def unsigned_dtype(max_value: int) -> np.dtype:
    """The smallest of ``uint8``, ``uint16``, ``uint32``, ``uint64`` holding ``max_value``.

    Example:
        >>> unsigned_dtype(255), unsigned_dtype(256), unsigned_dtype(2**40)
        (dtype('uint8'), dtype('uint16'), dtype('uint64'))
    """
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


class BoundedReader:
    """A cursor over bytes whose every read is checked against what is left.

    A read past the end raises :meth:`truncated`'s exception, a varint longer than
    :data:`MAX_VARINT_BYTES` raises :meth:`overlong`'s; subclasses override these (and
    :meth:`error`) to raise their own error class with their own context. Nothing here
    allocates more than the bytes it reads.

    Args:
        data (bytes-like or uint8 array): the input.
        pos (int): where to start. Default: 0.

    Example:
        >>> rd = BoundedReader(b"\\x05abcde")
        >>> bytes(rd.take(rd.varint("length"), "name"))
        b'abcde'
        >>> rd.u8("one more")
        Traceback (most recent call last):
        ...
        ValueError: truncated: one more needs 1 bytes, 0 left
    """

    def __init__(self, data: bytes | bytearray | memoryview | np.ndarray, pos: int = 0) -> None:
        self.buf = as_uint8(data)
        self.view = memoryview(self.buf)  # scalar reads are ~5x faster than numpy's
        self.pos = pos

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return self.buf.size - self.pos

    def error(self, msg: str) -> Exception:
        """The exception for a malformed input (raised by the caller)."""
        return ValueError(msg)

    def truncated(self, what: str, nbytes: int) -> Exception:
        """The exception for ``what`` needing ``nbytes`` more than are left."""
        return self.error(f"truncated: {what} needs {nbytes} bytes, {self.remaining} left")

    def overlong(self, what: str) -> Exception:
        """The exception for a varint longer than :data:`MAX_VARINT_BYTES`."""
        return self.error(f"{what}: varint longer than {MAX_VARINT_BYTES} bytes")

    def take(self, nbytes: int, what: str) -> np.ndarray:
        """The next ``nbytes`` bytes (a view), checked before anything is allocated."""
        if nbytes > self.remaining:
            raise self.truncated(what, nbytes)
        self.pos += nbytes
        return self.buf[self.pos - nbytes : self.pos]

    def u8(self, what: str) -> int:
        """One byte."""
        if self.pos >= self.buf.size:
            raise self.truncated(what, 1)
        self.pos += 1
        return self.view[self.pos - 1]

    def varint(self, what: str) -> int:
        """One unsigned LEB128 varint (``< 2**63``)."""
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value
        raise self.overlong(what)

    def varints(self, count: int, what: str) -> np.ndarray:
        """``count`` varints at once, as ``uint64``."""
        if count == 0:
            return np.zeros(0, dtype=np.uint64)
        if count > self.remaining:  # each varint is at least one byte
            raise self.truncated(what, count)
        window = self.buf[self.pos : self.pos + MAX_VARINT_BYTES * count]
        term = np.flatnonzero(window < 0x80)[:count]
        if term.size < count:
            if window.size == MAX_VARINT_BYTES * count:
                raise self.overlong(what)
            raise self.truncated(what, window.size + 1)
        nb = np.diff(term, prepend=-1)
        if nb.max() > MAX_VARINT_BYTES:
            raise self.overlong(what)
        used = int(term[-1]) + 1
        starts = term - nb + 1
        off = np.arange(used, dtype=np.int64) - np.repeat(starts, nb)
        parts = (window[:used] & 0x7F).astype(np.uint64) << (7 * off).astype(np.uint64)
        self.pos += used
        return np.bitwise_or.reduceat(parts, starts)
