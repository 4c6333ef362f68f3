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
* Batch 1 keeps eight independent accumulators per row, so the gathers of ``x`` overlap,
  and decodes entries in pairs (one byte holds two 4-bit codes).
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

from ..jit import AVAILABLE, JIT, numba_threads

__all__ = ["AVAILABLE", "chunk_bounds", "slp_vectorize", "sparse_matmul"]

logger = logging.getLogger(__name__)

if AVAILABLE:  # else the layers run on torch CSR
    import numba
    from numba import prange
    from numba import uint64 as u64


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

    @numba.njit(inline="always", **JIT)
    def decode_nibble(codes, lut, base, i):
        byte = u64(codes[i >> u64(1)])
        return lut[base + ((byte >> ((i & u64(1)) << u64(2))) & u64(15))]

    @numba.njit(inline="always", **JIT)
    def decode_code(codes, lut, base, i):
        return lut[base + u64(codes[i])]

    @numba.njit(inline="always", **JIT)
    def decode_value(codes, lut, base, i):
        return codes[i]

    # Pair decoders: entries ``2h`` and ``2h + 1``. For nibbles one byte load serves both,
    # which made the batch-1 loop ~20 % faster than two single decodes.
    @numba.njit(inline="always", **JIT)
    def pair_nibble(codes, lut, base, h):
        byte = u64(codes[h])
        return lut[base + (byte & u64(15))], lut[base + (byte >> u64(4))]

    @numba.njit(inline="always", **JIT)
    def pair_code(codes, lut, base, h):
        i = h << u64(1)
        return lut[base + u64(codes[i])], lut[base + u64(codes[i + u64(1)])]

    @numba.njit(inline="always", **JIT)
    def pair_value(codes, lut, base, h):
        i = h << u64(1)
        return codes[i], codes[i + u64(1)]

    def build_kernels(decode, pair):
        """The kernels for one decoder and its pair decoder (closure constants, so numba
        inlines them).

        A decoder passed as an argument instead costs a type dispatch per call that is
        slower than a small layer's whole product.
        """

        @numba.njit(**JIT)
        def matvec_rows(rowptr, cols, codes, lut, stride, x, bias, out, r0, r1):
            """Rows ``r0..r1`` of ``out = W x + bias`` for one input vector."""
            for r in range(u64(r0), u64(r1)):
                s = u64(rowptr[r])
                e = u64(rowptr[r + u64(1)])
                base = r * u64(stride)
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                a4 = np.float32(0.0)
                a5 = np.float32(0.0)
                a6 = np.float32(0.0)
                a7 = np.float32(0.0)
                i = s
                if i < e and (i & u64(1)):  # start on a pair boundary
                    a0 += decode(codes, lut, base, i) * x[u64(cols[i])]
                    i += u64(1)
                while i + u64(8) <= e:
                    h = i >> u64(1)
                    w0, w1 = pair(codes, lut, base, h)
                    w2, w3 = pair(codes, lut, base, h + u64(1))
                    w4, w5 = pair(codes, lut, base, h + u64(2))
                    w6, w7 = pair(codes, lut, base, h + u64(3))
                    a0 += w0 * x[u64(cols[i])]
                    a1 += w1 * x[u64(cols[i + u64(1)])]
                    a2 += w2 * x[u64(cols[i + u64(2)])]
                    a3 += w3 * x[u64(cols[i + u64(3)])]
                    a4 += w4 * x[u64(cols[i + u64(4)])]
                    a5 += w5 * x[u64(cols[i + u64(5)])]
                    a6 += w6 * x[u64(cols[i + u64(6)])]
                    a7 += w7 * x[u64(cols[i + u64(7)])]
                    i += u64(8)
                while i < e:
                    a1 += decode(codes, lut, base, i) * x[u64(cols[i])]
                    i += u64(1)
                out[r] = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) + bias[r]

        @numba.njit(inline="always", **JIT)
        def quad(xt, w0, w1, w2, w3, c0, c1, c2, c3):
            return (w0 * xt[c0] + w1 * xt[c1]) + (w2 * xt[c2] + w3 * xt[c3])

        @numba.njit(inline="always", **JIT)
        def weights4(codes, lut, base, cols, i, batch, b0):
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
        @numba.njit(inline="always", **JIT)
        def lanes16(codes, lut, base, cols, s, e, xt, batch, b0, acc):
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
                w0, w1, w2, w3, c0, c1, c2, c3 = weights4(codes, lut, base, cols, i, batch, b0)
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
                p10 += quad(
                    xt, w0, w1, w2, w3, c0 + u64(10), c1 + u64(10), c2 + u64(10), c3 + u64(10)
                )
                p11 += quad(
                    xt, w0, w1, w2, w3, c0 + u64(11), c1 + u64(11), c2 + u64(11), c3 + u64(11)
                )
                p12 += quad(
                    xt, w0, w1, w2, w3, c0 + u64(12), c1 + u64(12), c2 + u64(12), c3 + u64(12)
                )
                p13 += quad(
                    xt, w0, w1, w2, w3, c0 + u64(13), c1 + u64(13), c2 + u64(13), c3 + u64(13)
                )
                p14 += quad(
                    xt, w0, w1, w2, w3, c0 + u64(14), c1 + u64(14), c2 + u64(14), c3 + u64(14)
                )
                p15 += quad(
                    xt, w0, w1, w2, w3, c0 + u64(15), c1 + u64(15), c2 + u64(15), c3 + u64(15)
                )
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

        @numba.njit(inline="always", **JIT)
        def lanes8(codes, lut, base, cols, s, e, xt, batch, b0, acc):
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
                w0, w1, w2, w3, c0, c1, c2, c3 = weights4(codes, lut, base, cols, i, batch, b0)
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

        @numba.njit(**JIT)
        def matmat_tile(rowptr, cols, codes, lut, stride, x, bias, out, b0, r0, r1, tile):
            """Rows ``r0..r1``, lanes ``b0..b0 + 16`` of ``out = W x + bias[:, None]``.

            ``x`` is ``(K, M)`` (any strides), ``out`` ``(rows, M)``. The lanes are first copied
            into ``tile`` (``K * 16`` floats, feature ``c`` of lane ``j`` at ``c * w + j``,
            ``w`` 8 or 16): one input feature's lanes then sit in one or two cache lines.
            """
            k = u64(x.shape[0])
            valid = min(u64(16), u64(x.shape[1]) - u64(b0))
            width = u64(8) if valid <= u64(8) else u64(16)
            for c in range(k):
                for j in range(width):
                    tile[c * width + j] = x[c, u64(b0) + j] if j < valid else np.float32(0.0)
            acc = np.empty(16, np.float32)
            for r in range(u64(r0), u64(r1)):
                s = u64(rowptr[r])
                e = u64(rowptr[r + u64(1)])
                base = r * u64(stride)
                if width == u64(16):
                    lanes16(codes, lut, base, cols, s, e, tile, width, u64(0), acc)
                else:
                    lanes8(codes, lut, base, cols, s, e, tile, width, u64(0), acc)
                for j in range(valid):
                    out[r, u64(b0) + j] = acc[j] + bias[r]

        @numba.njit(**JIT)
        def matvec(rowptr, cols, codes, lut, stride, x, bias, out):
            matvec_rows(rowptr, cols, codes, lut, stride, x, bias, out, 0, rowptr.size - 1)

        @numba.njit(**JIT)
        def matvec_finite(rowptr, cols, codes, lut, stride, x, bias, out):
            """:func:`matvec`, returning whether ``sum(x)`` is finite (False when ``x``
            holds a NaN or Inf, or its sum overflows): the module's batch-1 path asks here
            rather than in numpy, whose call costs more than a small layer's product."""
            matvec_rows(rowptr, cols, codes, lut, stride, x, bias, out, 0, rowptr.size - 1)
            t0 = np.float32(0.0)
            t1 = np.float32(0.0)
            n = u64(x.size)
            i = u64(0)
            while i + u64(2) <= n:
                t0 += x[i]
                t1 += x[i + u64(1)]
                i += u64(2)
            if i < n:
                t0 += x[i]
            return np.isfinite(t0 + t1)

        @numba.njit(parallel=True, **JIT)
        def matvec_parallel(rowptr, cols, codes, lut, stride, x, bias, out, bounds):
            for t in prange(bounds.size - 1):
                matvec_rows(
                    rowptr, cols, codes, lut, stride, x, bias, out, bounds[t], bounds[t + 1]
                )

        @numba.njit(**JIT)
        def matmat(rowptr, cols, codes, lut, stride, x, bias, out):
            tile = np.empty(x.shape[0] * 16, np.float32)
            for b0 in range(0, x.shape[1], 16):
                matmat_tile(
                    rowptr, cols, codes, lut, stride, x, bias, out, b0, 0, rowptr.size - 1, tile
                )

        @numba.njit(parallel=True, **JIT)
        def matmat_parallel(rowptr, cols, codes, lut, stride, x, bias, out, bounds):
            chunks = bounds.size - 1
            tiles = (x.shape[1] + 15) // 16
            for task in prange(tiles * chunks):
                t = np.int64(task) // chunks
                ch = np.int64(task) - t * chunks
                tile = np.empty(x.shape[0] * 16, np.float32)
                matmat_tile(
                    rowptr,
                    cols,
                    codes,
                    lut,
                    stride,
                    x,
                    bias,
                    out,
                    t * 16,
                    bounds[ch],
                    bounds[ch + 1],
                    tile,
                )

        return {
            "matvec": matvec,
            "matvec_finite": matvec_finite,
            "matvec_parallel": matvec_parallel,
            "matmat": matmat,
            "matmat_parallel": matmat_parallel,
        }

    DECODERS = {"nibble": decode_nibble, "code": decode_code, "value": decode_value}
    PAIRS = {"nibble": pair_nibble, "code": pair_code, "value": pair_value}
    KERNELS = {name: build_kernels(dec, PAIRS[name]) for name, dec in DECODERS.items()}
    __all__ += [
        "DECODERS",
        "KERNELS",
        "PAIRS",
        "build_kernels",
        "decode_code",
        "decode_nibble",
        "decode_value",
        "pair_code",
        "pair_nibble",
        "pair_value",
    ]


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
    parts: tuple, x: np.ndarray, bias: np.ndarray, out: np.ndarray, *, threads: int = 1
) -> None:
    """``out = W x + bias[:, None]`` with the kernels, ``W`` given by its layout ``parts``.

    Args:
        parts (tuple): ``(decoder, rowptr, cols, payload, lut, stride)`` of a
            :class:`~torchprune_share.inference.layout.Layout`.
        x (np.ndarray): ``float32`` ``(K, M)``, one input feature per row, any strides
            (``x_batch.T`` of a C-contiguous batch is fine).
        bias (np.ndarray): ``float32`` ``(rows,)`` (zeros for no bias).
        out (np.ndarray): ``float32`` ``(rows, M)``, any strides; every entry is written.
        threads (int): row-parallel threads (1: the serial kernels).

    Example:
        >>> from torchprune_share.inference.layout import build_layout
        >>> lay = build_layout(2, 2, np.array([0, 3]), values=np.array([2.0, 3.0]))
        >>> parts = (lay.decoder, lay.rowptr, lay.cols, lay.payload, lay.lut, lay.stride)
        >>> out = np.empty((2, 1), np.float32)
        >>> sparse_matmul(parts, np.ones((2, 1), np.float32), np.zeros(2, np.float32), out)
        >>> out.ravel().tolist()
        [2.0, 3.0]
    """
    decoder, rowptr, cols, payload, lut, stride = parts
    kern = KERNELS[decoder]
    m = x.shape[1]
    threads = numba_threads(threads)
    if threads > 1 and int(rowptr[-1]) * m < PARALLEL_MIN_WORK:
        threads = 1
    args = (rowptr, cols, payload, lut, stride)
    with slp_vectorize():
        if threads > 1:
            numba.set_num_threads(threads)
            bounds = chunk_bounds(rowptr, threads)
        if m == 1:
            xv, ov = x[:, 0], out[:, 0]
            if threads > 1:
                kern["matvec_parallel"](*args, xv, bias, ov, bounds)
            else:
                kern["matvec"](*args, xv, bias, ov)
        elif threads > 1:
            kern["matmat_parallel"](*args, x, bias, out, bounds)
        else:
            kern["matmat"](*args, x, bias, out)
