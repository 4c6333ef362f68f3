"""numba loop of the optimal 1-D k-means: the divide-and-conquer DP of every row.

numpy evaluates the DP level by level over all rows at once, thousands of small array
operations per layer; compiled, each row's recursion runs in one loop. The arithmetic and
the bounds are those of :func:`~torchprune_share.kmeans.optimal._optimal_cuts` (the same
leftmost argmin, the same float64 operations in the same order), so both give the same
cuts. Without numba :data:`AVAILABLE` is ``False`` and the numpy code runs.

Example:
    >>> import numpy as np
    >>> W = np.array([[0.0, 1.0, 2.0, 3.0]]); S = np.array([[0.0, 0.0, 1.0, 11.0]])
    >>> Q = np.array([[0.0, 0.0, 1.0, 101.0]])
    >>> dp_cut_indices(W, S, Q, 2).tolist()   # {0, 1} and {10}: cut after grid column 2
    [[0, 2, 3]]
"""

from __future__ import annotations

import numpy as np

__all__ = ["AVAILABLE"]

from ..jit import AVAILABLE, JIT
from .rows import TINY

if AVAILABLE:  # else kmeans.optimal's numpy DP runs
    import numba

    @numba.njit(**JIT)
    def _argmin(A, Wg, Sg, b, lo, hi, j):
        # Leftmost argmin over i in [lo, hi] of A[i] - (S_j - S_i)^2 / max(W_j - W_i, TINY).
        wj, sj = Wg[b, j], Sg[b, j]
        best_i, best_v = lo, np.inf
        for i in range(lo, hi + 1):
            dw = max(wj - Wg[b, i], TINY)
            ds = sj - Sg[b, i]
            v = A[i] - ds * ds / dw
            if v < best_v:
                best_i, best_v = i, v
        return best_i, best_v

    @numba.njit(**JIT)
    def dp_cut_indices(Wg, Sg, Qg, k):
        """Grid columns ``(B, k+1)`` of the minimum-SSE partition of every row into k runs.

        ``Wg``, ``Sg``, ``Qg`` ``(B, m)`` float64 are the prefix sums (weight, centred
        weighted sum and squares) at the row's grid of cut candidates.
        """
        B, m = Wg.shape
        out = np.empty((B, k + 1), dtype=np.int64)
        # Layer 0's argmins stay 0 (one segment from the start); the others are rewritten
        # for every row.
        args = np.zeros((k, m), dtype=np.int64)
        D = np.empty(m)
        Dn = np.empty(m)
        A = np.empty(m)
        best = np.zeros(m, dtype=np.int64)
        # Intervals [a, b] still open: an explicit stack instead of recursion.
        stack = np.empty((2 * m + 2, 2), dtype=np.int64)
        for b in range(B):
            for j in range(m):
                D[j] = Qg[b, j] - Sg[b, j] * Sg[b, j] / max(Wg[b, j], TINY)
            for c in range(1, k):
                for j in range(m):
                    A[j] = D[j] - Qg[b, j]
                if c == k - 1:
                    lo = max(0, args[c - 1, m - 1])
                    hi = max(m - 1, lo)
                    i, v = _argmin(A, Wg, Sg, b, lo, hi, m - 1)
                    best[m - 1] = i
                    Dn[m - 1] = v + Qg[b, m - 1]
                else:
                    stack[0, 0], stack[0, 1] = 0, m - 1
                    top = 1
                    while top > 0:
                        top -= 1
                        a, e = stack[top, 0], stack[top, 1]
                        mid = (a + e) // 2
                        # No solved neighbour on a side: the argmin is bounded by 0 or m.
                        left = 0 if a == 0 else best[a - 1]
                        right = m if e + 1 >= m else best[e + 1]
                        lo = max(left, args[c - 1, mid])
                        hi = max(min(right, mid), lo)
                        i, v = _argmin(A, Wg, Sg, b, lo, hi, mid)
                        best[mid] = i
                        Dn[mid] = v + Qg[b, mid]
                        if mid + 1 <= e:
                            stack[top, 0], stack[top, 1] = mid + 1, e
                            top += 1
                        if a <= mid - 1:
                            stack[top, 0], stack[top, 1] = a, mid - 1
                            top += 1
                for j in range(m):
                    args[c, j] = best[j]
                D, Dn = Dn, D
            j = m - 1
            out[b, k] = j
            for c in range(k - 1, -1, -1):
                j = args[c, j]
                out[b, c] = j
        return out

    __all__ += ["dp_cut_indices"]
