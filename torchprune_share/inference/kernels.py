"""Numba kernels for ``y = x Wᵀ + b`` straight from a compressed sparse-row layout.

``W`` is held as row pointers, column indices (``uint16`` or ``int32``) and one weight
source per kept entry, read through a *decoder*:

* :func:`decode_nibble`: 4-bit codes packed two per byte (entry ``i`` in byte ``i >> 1``,
  low nibble first), looked up in a codebook;
* :func:`decode_code`: one unpacked code per entry (``uint8``/``uint16``), looked up;
* :func:`decode_value`: one float per entry (pruned-only layers, no codebook).

The codebook is a flat ``float32`` table; row ``r`` reads ``lut[r * stride + code]``
(``stride`` 0 for one codebook per tensor, ``k`` for one per output row).

Why the kernels look as they do:

* Every index is unsigned (``uint64``): numba wraps negative signed indices, and the
  compare-and-select that costs on every gather made the matrix-vector loop ~1.5x slower.
* Batch 1 keeps four independent accumulators per row, so the gathers of ``x`` overlap.
* Batch > 1 reads ``xᵀ`` (contiguous per input feature), so each kept weight is decoded
  once and used for all ``B`` outputs in a loop the compiler vectorises; four entries are
  summed pairwise before they touch the accumulator row.
* No ``fastmath``: the summation order is fixed (bitwise deterministic for any thread
  count, since each row is summed by one thread), and NaN/Inf propagate as IEEE says.
* ``parallel=True`` variants split rows into chunks of equal kept-entry counts.

Importing this module without numba leaves :data:`AVAILABLE` ``False`` and defines no
kernel; callers then use torch's CSR path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np

__all__ = ["AVAILABLE", "chunk_bounds", "slp_vectorize", "sparse_matmul"]

logger = logging.getLogger(__name__)

try:  # the fast path is optional: without numba the layers run on torch CSR
    import numba
    from numba import prange
    from numba import uint64 as u64
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    AVAILABLE = False
else:
    AVAILABLE = True


def chunk_bounds(rowptr: np.ndarray, chunks: int) -> np.ndarray:
    """Split the rows into ``chunks`` contiguous ranges holding about equal kept entries.

    Args:
        rowptr (np.ndarray): row pointers, ``rows + 1`` non-decreasing integers.
        chunks (int): number of ranges (at least 1).

    Returns:
        ``int64`` array of ``chunks + 1`` row boundaries, first 0, last ``rows``.

    Example:
        >>> chunk_bounds(np.array([0, 10, 10, 11, 20]), 2).tolist()
        [0, 1, 4]
    """
    rows = rowptr.size - 1
    targets = np.linspace(0, int(rowptr[-1]), chunks + 1)
    bounds = np.searchsorted(rowptr, targets, side="left").astype(np.int64)
    bounds = np.clip(bounds, 0, rows)
    bounds[0], bounds[-1] = 0, rows
    return np.maximum.accumulate(bounds)


if AVAILABLE:
    _jit = {"nogil": True, "cache": True, "error_model": "numpy"}

    @numba.njit(inline="always", **_jit)
    def decode_nibble(codes, lut, base, i):
        byte = u64(codes[i >> u64(1)])
        return lut[base + ((byte >> ((i & u64(1)) << u64(2))) & u64(15))]

    @numba.njit(inline="always", **_jit)
    def decode_code(codes, lut, base, i):
        return lut[base + u64(codes[i])]

    @numba.njit(inline="always", **_jit)
    def decode_value(codes, lut, base, i):
        return codes[i]

    @numba.njit(**_jit)
    def matvec_rows(decode, rowptr, cols, codes, lut, stride, x, bias, out, r0, r1):
        """Rows ``r0..r1`` of ``out = W x + bias`` for one input vector."""
        for r in range(u64(r0), u64(r1)):
            s = u64(rowptr[r])
            e = u64(rowptr[r + u64(1)])
            base = r * u64(stride)
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            i = s
            while i + u64(4) <= e:
                a0 += decode(codes, lut, base, i) * x[u64(cols[i])]
                a1 += decode(codes, lut, base, i + u64(1)) * x[u64(cols[i + u64(1)])]
                a2 += decode(codes, lut, base, i + u64(2)) * x[u64(cols[i + u64(2)])]
                a3 += decode(codes, lut, base, i + u64(3)) * x[u64(cols[i + u64(3)])]
                i += u64(4)
            while i < e:
                a0 += decode(codes, lut, base, i) * x[u64(cols[i])]
                i += u64(1)
            out[r] = ((a0 + a1) + (a2 + a3)) + bias[r]

    @numba.njit(inline="always", **_jit)
    def quad(xt, w0, w1, w2, w3, c0, c1, c2, c3):
        return (w0 * xt[c0] + w1 * xt[c1]) + (w2 * xt[c2] + w3 * xt[c3])

    @numba.njit(inline="always", **_jit)
    def weights4(decode, codes, lut, base, cols, i, batch, b0):
        """Four decoded weights and the offsets of their ``xᵀ`` rows (plus lane ``b0``)."""
        return (
            decode(codes, lut, base, i),
            decode(codes, lut, base, i + u64(1)),
            decode(codes, lut, base, i + u64(2)),
            decode(codes, lut, base, i + u64(3)),
            u64(cols[i]) * batch + b0,
            u64(cols[i + u64(1)]) * batch + b0,
            u64(cols[i + u64(2)]) * batch + b0,
            u64(cols[i + u64(3)]) * batch + b0,
        )

    # Sixteen (eight) batch lanes of one row in scalar accumulators: with SLP vectorisation
    # on (see :func:`slp`) they become two (one) AVX registers held across the whole row,
    # and each entry costs one broadcast and a fused row of multiply-adds.
    @numba.njit(inline="always", **_jit)
    def lanes16(decode, codes, lut, base, cols, s, e, xt, batch, b0, acc):
        p0 = np.float32(0.0)
        p1 = np.float32(0.0)
        p2 = np.float32(0.0)
        p3 = np.float32(0.0)
        p4 = np.float32(0.0)
        p5 = np.float32(0.0)
        p6 = np.float32(0.0)
        p7 = np.float32(0.0)
        p8 = np.float32(0.0)
        p9 = np.float32(0.0)
        p10 = np.float32(0.0)
        p11 = np.float32(0.0)
        p12 = np.float32(0.0)
        p13 = np.float32(0.0)
        p14 = np.float32(0.0)
        p15 = np.float32(0.0)
        i = s
        while i + u64(4) <= e:
            w0, w1, w2, w3, c0, c1, c2, c3 = weights4(decode, codes, lut, base, cols, i, batch, b0)
            p0 += quad(xt, w0, w1, w2, w3, c0 + u64(0), c1 + u64(0), c2 + u64(0), c3 + u64(0))
            p1 += quad(xt, w0, w1, w2, w3, c0 + u64(1), c1 + u64(1), c2 + u64(1), c3 + u64(1))
            p2 += quad(xt, w0, w1, w2, w3, c0 + u64(2), c1 + u64(2), c2 + u64(2), c3 + u64(2))
            p3 += quad(xt, w0, w1, w2, w3, c0 + u64(3), c1 + u64(3), c2 + u64(3), c3 + u64(3))
            p4 += quad(xt, w0, w1, w2, w3, c0 + u64(4), c1 + u64(4), c2 + u64(4), c3 + u64(4))
            p5 += quad(xt, w0, w1, w2, w3, c0 + u64(5), c1 + u64(5), c2 + u64(5), c3 + u64(5))
            p6 += quad(xt, w0, w1, w2, w3, c0 + u64(6), c1 + u64(6), c2 + u64(6), c3 + u64(6))
            p7 += quad(xt, w0, w1, w2, w3, c0 + u64(7), c1 + u64(7), c2 + u64(7), c3 + u64(7))
            p8 += quad(xt, w0, w1, w2, w3, c0 + u64(8), c1 + u64(8), c2 + u64(8), c3 + u64(8))
            p9 += quad(xt, w0, w1, w2, w3, c0 + u64(9), c1 + u64(9), c2 + u64(9), c3 + u64(9))
            p10 += quad(xt, w0, w1, w2, w3, c0 + u64(10), c1 + u64(10), c2 + u64(10), c3 + u64(10))
            p11 += quad(xt, w0, w1, w2, w3, c0 + u64(11), c1 + u64(11), c2 + u64(11), c3 + u64(11))
            p12 += quad(xt, w0, w1, w2, w3, c0 + u64(12), c1 + u64(12), c2 + u64(12), c3 + u64(12))
            p13 += quad(xt, w0, w1, w2, w3, c0 + u64(13), c1 + u64(13), c2 + u64(13), c3 + u64(13))
            p14 += quad(xt, w0, w1, w2, w3, c0 + u64(14), c1 + u64(14), c2 + u64(14), c3 + u64(14))
            p15 += quad(xt, w0, w1, w2, w3, c0 + u64(15), c1 + u64(15), c2 + u64(15), c3 + u64(15))
            i += u64(4)
        while i < e:
            w0 = decode(codes, lut, base, i)
            c0 = u64(cols[i]) * batch + b0
            p0 += w0 * xt[c0 + u64(0)]
            p1 += w0 * xt[c0 + u64(1)]
            p2 += w0 * xt[c0 + u64(2)]
            p3 += w0 * xt[c0 + u64(3)]
            p4 += w0 * xt[c0 + u64(4)]
            p5 += w0 * xt[c0 + u64(5)]
            p6 += w0 * xt[c0 + u64(6)]
            p7 += w0 * xt[c0 + u64(7)]
            p8 += w0 * xt[c0 + u64(8)]
            p9 += w0 * xt[c0 + u64(9)]
            p10 += w0 * xt[c0 + u64(10)]
            p11 += w0 * xt[c0 + u64(11)]
            p12 += w0 * xt[c0 + u64(12)]
            p13 += w0 * xt[c0 + u64(13)]
            p14 += w0 * xt[c0 + u64(14)]
            p15 += w0 * xt[c0 + u64(15)]
            i += u64(1)
        acc[b0 + u64(0)] = p0
        acc[b0 + u64(1)] = p1
        acc[b0 + u64(2)] = p2
        acc[b0 + u64(3)] = p3
        acc[b0 + u64(4)] = p4
        acc[b0 + u64(5)] = p5
        acc[b0 + u64(6)] = p6
        acc[b0 + u64(7)] = p7
        acc[b0 + u64(8)] = p8
        acc[b0 + u64(9)] = p9
        acc[b0 + u64(10)] = p10
        acc[b0 + u64(11)] = p11
        acc[b0 + u64(12)] = p12
        acc[b0 + u64(13)] = p13
        acc[b0 + u64(14)] = p14
        acc[b0 + u64(15)] = p15

    @numba.njit(inline="always", **_jit)
    def lanes8(decode, codes, lut, base, cols, s, e, xt, batch, b0, acc):
        p0 = np.float32(0.0)
        p1 = np.float32(0.0)
        p2 = np.float32(0.0)
        p3 = np.float32(0.0)
        p4 = np.float32(0.0)
        p5 = np.float32(0.0)
        p6 = np.float32(0.0)
        p7 = np.float32(0.0)
        i = s
        while i + u64(4) <= e:
            w0, w1, w2, w3, c0, c1, c2, c3 = weights4(decode, codes, lut, base, cols, i, batch, b0)
            p0 += quad(xt, w0, w1, w2, w3, c0 + u64(0), c1 + u64(0), c2 + u64(0), c3 + u64(0))
            p1 += quad(xt, w0, w1, w2, w3, c0 + u64(1), c1 + u64(1), c2 + u64(1), c3 + u64(1))
            p2 += quad(xt, w0, w1, w2, w3, c0 + u64(2), c1 + u64(2), c2 + u64(2), c3 + u64(2))
            p3 += quad(xt, w0, w1, w2, w3, c0 + u64(3), c1 + u64(3), c2 + u64(3), c3 + u64(3))
            p4 += quad(xt, w0, w1, w2, w3, c0 + u64(4), c1 + u64(4), c2 + u64(4), c3 + u64(4))
            p5 += quad(xt, w0, w1, w2, w3, c0 + u64(5), c1 + u64(5), c2 + u64(5), c3 + u64(5))
            p6 += quad(xt, w0, w1, w2, w3, c0 + u64(6), c1 + u64(6), c2 + u64(6), c3 + u64(6))
            p7 += quad(xt, w0, w1, w2, w3, c0 + u64(7), c1 + u64(7), c2 + u64(7), c3 + u64(7))
            i += u64(4)
        while i < e:
            w0 = decode(codes, lut, base, i)
            c0 = u64(cols[i]) * batch + b0
            p0 += w0 * xt[c0 + u64(0)]
            p1 += w0 * xt[c0 + u64(1)]
            p2 += w0 * xt[c0 + u64(2)]
            p3 += w0 * xt[c0 + u64(3)]
            p4 += w0 * xt[c0 + u64(4)]
            p5 += w0 * xt[c0 + u64(5)]
            p6 += w0 * xt[c0 + u64(6)]
            p7 += w0 * xt[c0 + u64(7)]
            i += u64(1)
        acc[b0 + u64(0)] = p0
        acc[b0 + u64(1)] = p1
        acc[b0 + u64(2)] = p2
        acc[b0 + u64(3)] = p3
        acc[b0 + u64(4)] = p4
        acc[b0 + u64(5)] = p5
        acc[b0 + u64(6)] = p6
        acc[b0 + u64(7)] = p7

    @numba.njit(**_jit)
    def matmat_rows(
        decode, rowptr, cols, codes, lut, stride, xt, width, valid, bias, out, sb, sr, r0, r1
    ):
        """Rows ``r0..r1`` of ``out[b * sb + r * sr] = (W xᵀ)[r, b] + bias[r]``, ``b < valid``.

        ``xt`` is one tile of ``xᵀ`` flattened, ``width`` (8 or 16) lanes per input
        feature: feature ``c`` of lane ``b`` at ``c * width + b``; lanes past ``valid`` are
        padding and are not stored.
        """
        batch = u64(width)
        acc = np.empty(16, np.float32)
        for r in range(u64(r0), u64(r1)):
            s = u64(rowptr[r])
            e = u64(rowptr[r + u64(1)])
            base = r * u64(stride)
            if batch == u64(16):
                lanes16(decode, codes, lut, base, cols, s, e, xt, batch, u64(0), acc)
            else:
                lanes8(decode, codes, lut, base, cols, s, e, xt, batch, u64(0), acc)
            for b in range(u64(valid)):
                out[b * u64(sb) + r * u64(sr)] = acc[b] + bias[r]

    @numba.njit(**_jit)
    def matvec(decode, rowptr, cols, codes, lut, stride, x, bias, out):
        matvec_rows(decode, rowptr, cols, codes, lut, stride, x, bias, out, 0, rowptr.size - 1)

    @numba.njit(parallel=True, **_jit)
    def matvec_parallel(decode, rowptr, cols, codes, lut, stride, x, bias, out, bounds):
        for t in prange(bounds.size - 1):
            matvec_rows(
                decode, rowptr, cols, codes, lut, stride, x, bias, out, bounds[t], bounds[t + 1]
            )

    @numba.njit(**_jit)
    def matmat(decode, rowptr, cols, codes, lut, stride, xt, width, valid, bias, out, sb, sr):
        rows = rowptr.size - 1
        matmat_rows(
            decode, rowptr, cols, codes, lut, stride, xt, width, valid, bias, out, sb, sr, 0, rows
        )

    @numba.njit(parallel=True, **_jit)
    def matmat_parallel(
        decode, rowptr, cols, codes, lut, stride, xt, width, valid, bias, out, sb, sr, bounds
    ):
        for t in prange(bounds.size - 1):
            matmat_rows(
                decode,
                rowptr,
                cols,
                codes,
                lut,
                stride,
                xt,
                width,
                valid,
                bias,
                out,
                sb,
                sr,
                bounds[t],
                bounds[t + 1],
            )

    DECODERS = {"nibble": decode_nibble, "code": decode_code, "value": decode_value}
    __all__ += [
        "DECODERS",
        "decode_code",
        "decode_nibble",
        "decode_value",
        "matmat",
        "matmat_parallel",
        "matvec",
        "matvec_parallel",
    ]


TILE = 16
PARALLEL_MIN_WORK = 1 << 16  # kept entries x batch below which threads only add overhead


@contextlib.contextmanager
def slp_vectorize() -> Iterator[None]:
    """Compile (lazily, inside the block) with LLVM's SLP vectoriser on.

    numba turns SLP vectorisation off by default (``NUMBA_SLP_VECTORIZE=0``); the lane
    blocks of :func:`matmat_rows` need it to keep their sixteen accumulators in two AVX
    registers. numba reads the setting when it builds a pass pipeline, i.e. when a kernel
    is compiled on its first call with new argument types; the compiled code, cached on
    disk, keeps it.
    """
    old = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = old


def sparse_matmul(
    parts: tuple,
    x: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
    *,
    x_transposed: bool = False,
    out_transposed: bool = False,
    threads: int = 1,
) -> None:
    """``out = x Wᵀ + bias`` with the kernels, ``W`` given by its layout ``parts``.

    Args:
        parts (tuple): ``(decoder, rowptr, cols, payload, lut, stride)`` of a
            :class:`~torchprune_share.inference.layout.Layout`.
        x (np.ndarray): ``float32``, ``(M, K)``, or ``(K, M)`` when ``x_transposed``.
        bias (np.ndarray): ``float32`` ``(rows,)`` (zeros for no bias).
        out (np.ndarray): C-contiguous ``float32`` ``(M, rows)``, or ``(rows, M)`` when
            ``out_transposed``; every entry is written.
        x_transposed (bool): ``x`` holds one input feature per row.
        out_transposed (bool): ``out`` holds one output feature per row.
        threads (int): row-parallel threads (1: the serial kernels).

    Example:
        >>> from torchprune_share.inference.layout import build_layout
        >>> lay = build_layout(2, 2, np.array([0, 3]), values=np.array([2.0, 3.0]))
        >>> parts = (lay.decoder, lay.rowptr, lay.cols, lay.payload, lay.lut, lay.stride)
        >>> out = np.empty((1, 2), np.float32)
        >>> sparse_matmul(parts, np.array([[1.0, 1.0]], np.float32), np.zeros(2, np.float32), out)
        >>> out.tolist()
        [[2.0, 3.0]]
    """
    decoder, rowptr, cols, payload, lut, stride = parts
    decode = DECODERS[decoder]
    rows = rowptr.size - 1
    m = x.shape[1] if x_transposed else x.shape[0]
    k = x.shape[0] if x_transposed else x.shape[1]
    nnz = int(rowptr[-1])
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    if threads > 1 and nnz * max(m, 1) < PARALLEL_MIN_WORK:
        threads = 1
    bounds = chunk_bounds(rowptr, threads) if threads > 1 else None
    if threads > 1:
        numba.set_num_threads(threads)
    with slp_vectorize():
        if m == 1 and not x_transposed and not out_transposed:
            args = (decode, rowptr, cols, payload, lut, stride, x[0], bias, out[0])
            if bounds is None:
                matvec(*args)
            else:
                matvec_parallel(*args, bounds)
            return
        flat = out.reshape(-1)
        sb, sr = (1, m) if out_transposed else (rows, 1)
        for b0 in range(0, m, TILE):
            valid = min(TILE, m - b0)
            width = 8 if valid <= 8 else TILE
            tile = np.zeros((k, width), np.float32)
            tile[:, :valid] = x[:, b0 : b0 + valid] if x_transposed else x[b0 : b0 + valid].T
            # The tile's first output sits at lane b0 of out (column b0, or row b0).
            view = flat[b0 * (1 if out_transposed else rows) :]
            args = (decode, rowptr, cols, payload, lut, stride, tile.reshape(-1), width, valid)
            if bounds is None:
                matmat(*args, bias, view, sb, sr)
            else:
                matmat_parallel(*args, bias, view, sb, sr, bounds)
