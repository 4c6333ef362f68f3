"""Optimal length-limited prefix codes for integer streams (numpy only).

The code-length half of the Huffman codec (:mod:`torchprune_share.codec.huffman`
writes and reads the streams): a stream's histogram (:class:`SymbolHistogram`), optimal
length-limited code lengths by package-merge (:func:`code_lengths`), the payload size
they give (:func:`encoded_size_bits`) and the canonical code of a set of lengths
(:func:`canonical_code`).

Example:
    >>> lengths = code_lengths(np.array([10, 1, 0, 1, 3]))
    >>> order, starts = canonical_code(lengths[lengths > 0], 3)
    >>> lengths.tolist(), starts.tolist()
    ([1, 3, 0, 3, 2], [0, 4, 6, 7])
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_MAX_LEN",
    "MAX_CODE_LEN",
    "MAX_SYMBOL",
    "SymbolHistogram",
    "as_symbols",
    "canonical_code",
    "check_max_len",
    "code_lengths",
    "encoded_size_bits",
]

#: Default limit on the code length used by :func:`~torchprune_share.codec.encode` and
#: :func:`code_lengths`.
DEFAULT_MAX_LEN = 20
#: Largest supported code length (the decoder's table has ``2**L`` entries).
MAX_CODE_LEN = 20
#: Largest symbol a stream may hold.
MAX_SYMBOL = (1 << 63) - 1


def check_max_len(max_len: int) -> int:
    """``max_len`` as an int, checked to be in ``1..MAX_CODE_LEN``."""
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
        raise TypeError(
            f"max_len must be an int in 1..{MAX_CODE_LEN}, got {type(max_len).__name__}"
        )
    max_len = int(max_len)
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be in 1..{MAX_CODE_LEN}, got {max_len}")
    return max_len


def as_symbols(symbols: np.ndarray) -> np.ndarray:
    """Validate a symbol stream and return it flattened (integer dtype, values < 2**63)."""
    arr = np.asarray(symbols)
    if arr.size == 0:  # np.asarray([]) is float64; an empty stream has no values to check
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "biu":
        raise TypeError(f"symbols must have an integer dtype, got {arr.dtype}")
    arr = arr.ravel()
    if arr.dtype.kind == "b":
        arr = arr.view(np.uint8)
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ValueError(f"symbols must be non-negative, got minimum {int(arr.min())}")
    if arr.dtype == np.uint64 and int(arr.max()) > MAX_SYMBOL:
        raise ValueError(f"symbols must be < 2**63, got maximum {int(arr.max())}")
    return arr


class SymbolHistogram:
    """Distinct symbols of a stream, their counts and a way to gather per-symbol tables.

    Args:
        sym (numpy.ndarray): a non-empty stream checked by :func:`as_symbols`.

    Example:
        >>> h = SymbolHistogram(np.array([7, 3, 7, 7]))
        >>> h.alphabet.tolist(), h.counts.tolist(), h.gather(np.array([10, 20])).tolist()
        ([3, 7], [1, 3], [20, 10, 20, 20])
    """

    def __init__(self, sym: np.ndarray) -> None:
        vmax = int(sym.max())
        # bincount is ~20x faster than a sort-based unique; use it whenever the dense
        # count array stays proportional to the input.
        self._dense = vmax < max(1 << 16, 2 * sym.size)
        if self._dense:
            if sym.dtype.itemsize == 8:
                sym = sym.view(np.int64)  # values < 2**63, bincount refuses uint64
            counts = np.bincount(sym, minlength=vmax + 1)
            self.alphabet = np.flatnonzero(counts)
            self.counts = counts[self.alphabet]
            self._sym = sym
            self._size = vmax + 1
        else:
            alphabet, inverse, counts = np.unique(sym, return_inverse=True, return_counts=True)
            self.alphabet = alphabet.astype(np.uint64 if alphabet.dtype == np.uint64 else np.int64)
            self.counts = counts
            self._inverse = inverse.reshape(-1)

    def gather(self, per_rank: np.ndarray) -> np.ndarray:
        """Map a table indexed by alphabet rank onto the stream."""
        if self._dense:
            full = np.zeros(self._size, dtype=per_rank.dtype)
            full[self.alphabet] = per_rank
            return full[self._sym]
        return per_rank[self._inverse]


def code_lengths(frequencies: np.ndarray, max_len: int = DEFAULT_MAX_LEN) -> np.ndarray:
    """Optimal length-limited prefix-code lengths (package-merge).

    Args:
        frequencies: 1-D array of non-negative weights (integers or finite floats), one
            per symbol. Symbols with weight 0 get no code.
        max_len: longest allowed code, ``1..20``.

    Returns:
        ``uint8`` array of the same length: the code length of each symbol, 0 where
        the weight is 0. With two or more used symbols the lengths satisfy Kraft's
        equality (a complete code) and minimise ``sum(freq * length)`` subject to
        ``length <= max_len``; a single used symbol gets length 1.

    Raises:
        TypeError: non-numeric weights, or ``max_len`` not an int.
        ValueError: weights not 1-D, negative or not finite, ``max_len`` out of range,
            or more than ``2**max_len`` used symbols.

    Example:
        >>> code_lengths(np.array([10, 1, 0, 1, 3])).tolist()
        [1, 3, 0, 3, 2]
    """
    max_len = check_max_len(max_len)
    f = np.asarray(frequencies)
    if f.ndim != 1:
        raise ValueError(f"frequencies must be 1-D, got shape {f.shape}")
    if f.dtype.kind not in "biuf":
        raise TypeError(f"frequencies must be numeric, got dtype {f.dtype}")
    if f.dtype.kind == "f" and not np.isfinite(f).all():
        raise ValueError("frequencies must be finite")
    if f.size and f.min() < 0:
        raise ValueError(f"frequencies must be non-negative, got minimum {f.min()}")
    lengths = np.zeros(f.size, dtype=np.uint8)
    used = np.flatnonzero(f)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1
        return lengths
    if n > 1 << max_len:
        raise ValueError(
            f"{n} distinct symbols need codes longer than max_len={max_len} "
            f"(at most 2**max_len = {1 << max_len} symbols)"
        )
    wdtype = np.float64 if f.dtype.kind == "f" else np.int64
    order = used[np.argsort(f[used], kind="stable")]
    w = f[order].astype(wdtype)
    depth = min(max_len, n - 1)  # a Huffman code for n symbols is never deeper than n-1

    # Package-merge: level `depth` holds one coin per symbol; each shallower level is
    # the coins merged with pairwise packages of the level below. We only need, per
    # level, which entries are coins: coins of a level appear in weight order, so any
    # prefix of a level selects the lightest symbols.
    is_coin = [None] * (depth + 1)
    is_coin[depth] = np.ones(n, dtype=bool)
    level = w
    for lev in range(depth - 1, 0, -1):
        m = level.size // 2
        packages = level[0 : 2 * m : 2] + level[1 : 2 * m : 2]
        merged = np.concatenate([w, packages])
        # stable: coins before packages of equal weight; timsort merges the two runs.
        perm = np.argsort(merged, kind="stable")
        level = merged[perm]
        is_coin[lev] = perm < n

    # Select the 2n-2 cheapest items of level 1; packages chosen at a level select
    # twice as many items of the next level. A symbol's code length is the number of
    # levels whose selection includes its coin.
    sorted_lengths = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for lev in range(1, depth + 1):
        coins = int(np.count_nonzero(is_coin[lev][:take]))
        sorted_lengths[:coins] += 1
        take = 2 * (take - coins)
    lengths[order] = sorted_lengths
    return lengths


def encoded_size_bits(symbols: np.ndarray, max_len: int = DEFAULT_MAX_LEN) -> int:
    """Payload size in bits that :func:`encode` would produce, without encoding.

    Cheap (a histogram plus :func:`code_lengths`); useful to compare candidate
    representations (e.g. index bit widths). The header -- typically a few dozen
    bytes, ``O(alphabet + n / 4096)`` -- is not included.

    Args:
        symbols: integer array of non-negative values (flattened).
        max_len: code length limit, as for :func:`encode`.

    Returns:
        ``sum(count[s] * length[s])`` over the distinct symbols ``s``.

    Example:
        >>> encoded_size_bits(np.array([0, 0, 0, 1]))
        4
    """
    max_len = check_max_len(max_len)
    sym = as_symbols(symbols)
    if sym.size == 0:
        return 0
    hist = SymbolHistogram(sym)
    lengths = code_lengths(hist.counts, max_len)
    return int(np.dot(hist.counts.astype(np.int64), lengths.astype(np.int64)))


def canonical_code(lengths: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical code order and left-aligned ``L``-bit code starts.

    Returns:
        ``(order, starts)``: ``order`` sorts symbols by (length, rank); ``starts[i]`` is
        the code of ``order[i]`` shifted left to ``L`` bits. Consecutive starts differ
        by ``2**(L - length)``, i.e. every code owns a contiguous range of the
        ``2**L``-entry decoding table.
    """
    order = np.argsort(lengths, kind="stable")
    inc = np.left_shift(np.int64(1), L - lengths[order].astype(np.int64))
    starts = np.cumsum(inc) - inc
    return order, starts
