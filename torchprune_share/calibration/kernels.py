"""numba loops of the calibrated algorithms: the column sweep's inner block and the refit's
normal equations.

Both are loops that torch runs as thousands of small operations (the sweep: a handful of
kernel launches per column; the refit: a dense product with a one-hot matrix that is
``k`` times larger than the work). Compiled, they cost a fraction of the time; the
results are those of the torch formulation up to float rounding. Without numba
:data:`AVAILABLE` is ``False`` and the callers keep their torch code.

Example:
    >>> h = np.eye(2, dtype=np.float32)  # two entries on one centroid: S^T H S = 2
    >>> mats, rhs = normal_equations(h, np.ones((1, 2), np.float32), np.array([[0, 0]]), 1)
    >>> mats.tolist(), rhs.tolist()
    ([[[2.0]]], [[2.0]])
"""

from __future__ import annotations

import numpy as np

from ..jit import AVAILABLE, JIT

__all__ = ["AVAILABLE"]

if AVAILABLE:  # else the torch formulations in sweep.py and refit.py run
    import numba
    from numba import prange
    from numba import uint64 as u64

    @numba.njit(**JIT)
    def sweep_block(w1, u1, table, mids, keep1, codes1, err1):
        """Sweep one block of columns in place (GPTQ's inner loop, without the lazy update).

        ``w1`` ``(R, B)`` float32 is the block of the weight (updated in place, column
        ``j`` ends as its compressed value), ``u1`` ``(B, B)`` its block of the upper
        Cholesky factor of ``H⁻¹``. ``table``/``mids`` ``(R, k)``/``(R, k - 1)`` are the
        sorted codebook of each row and its midpoints; with ``k == 0`` entries are kept
        as they are (pruning). ``keep1`` ``(R, B)`` bool; ``codes1`` ``(R, B)`` int64
        receives the codes (``-1`` where pruned), ``err1`` ``(R, B)`` the scaled errors.
        """
        rows, width = w1.shape
        k = table.shape[1]
        # Row by row (rows are independent): the update of the row's later columns is a
        # contiguous slice operation, which numba vectorises.
        for r in range(rows):
            wr = w1[r]
            for j in range(width):
                v = wr[j]
                if keep1[r, j]:
                    if k > 0:
                        # Count of midpoints below v (ties to the lower centroid).
                        lo, hi = 0, k - 1
                        while lo < hi:
                            mid = (lo + hi) >> 1
                            if mids[r, mid] < v:
                                lo = mid + 1
                            else:
                                hi = mid
                        q = table[r, lo]
                        codes1[r, j] = lo
                    else:
                        q = v
                        codes1[r, j] = 0
                else:
                    q = np.float32(0.0)
                    codes1[r, j] = -1
                e = (v - q) / u1[j, j]
                err1[r, j] = e
                wr[j] = q
                uj = u1[j]
                # Unsigned indices: numba checks signed ones for wraparound on every
                # access, which keeps this loop from vectorising.
                for jj in range(u64(j + 1), u64(width)):
                    wr[jj] -= e * uj[jj]

    @numba.njit(inline="always", **JIT)
    def _row_equations(h, w, codes, k, r, mats, rhs):
        # T = S_rᵀ H is k sums of rows of H, one row-add per entry: C² adds where the
        # product with the one-hot costs k · C².
        cols = codes.shape[1]
        t = np.zeros((k, cols), np.float32)
        for j in range(cols):
            c = codes[r, j]
            if c >= 0:
                for i in range(cols):
                    t[c, i] += h[j, i]
        for a in range(k):
            acc = 0.0
            for i in range(cols):
                c = codes[r, i]
                if c >= 0:
                    mats[r, a, c] += t[a, i]
                # Pruned entries are fixed at zero; their target still pulls.
                acc += np.float64(t[a, i]) * w[r, i]
            rhs[r, a] = acc

    @numba.njit(**JIT)
    def normal_equations(h, w, codes, k):
        """``(S_rᵀ H S_r, S_rᵀ H w_r)`` of every row in float64, ``S_r`` the one-hot of
        row ``r``'s codes (``-1``: no centroid). One thread; see
        :func:`normal_equations_parallel`.
        """
        rows = codes.shape[0]
        mats = np.zeros((rows, k, k), np.float64)
        rhs = np.zeros((rows, k), np.float64)
        for r in range(rows):
            _row_equations(h, w, codes, k, r, mats, rhs)
        return mats, rhs

    # A kernel of its own: compiling the parallel one costs 2-3 s on a fresh install (the
    # serial one 0.7 s; benchmarks/results/calibration_startup.txt), which a one-thread
    # calibration need not pay. Two functions, not one compiled twice: numba's cache key
    # (the bytecode and the signature, not the flags) would let either load the other.
    @numba.njit(parallel=True, **JIT)
    def normal_equations_parallel(h, w, codes, k):
        """:func:`normal_equations` with the rows spread over numba's threads."""
        rows = codes.shape[0]
        mats = np.zeros((rows, k, k), np.float64)
        rhs = np.zeros((rows, k), np.float64)
        for r in prange(rows):
            _row_equations(h, w, codes, k, r, mats, rhs)
        return mats, rhs

    __all__ += ["normal_equations", "normal_equations_parallel", "sweep_block"]
