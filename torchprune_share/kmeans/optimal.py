"""Globally optimal 1-D k-means: a dynamic programme over cut positions.

Squared error is a Monge cost over runs of the sorted values, so the
(leftmost) argmin of ``D_c[j] = min_i D_{c-1}[i] + cost(i, j)`` is monotone
in j and every layer is solved by divide and conquer, all rows and all
columns of a level at once: O(k m log m) per row for m cut candidates. Costs
are exact (prefix sums on the real data); only the cut positions are
restricted to a grid when a row has more than m distinct values.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from . import kernels
from .inits import init_centroids
from .lloyd import lloyd
from .rows import (
    TINY,
    SortedRows,
    gather,
    partition_sse,
    run_starts,
    searchsorted_rows,
    segment_stats,
)

__all__ = ["dp_seed", "optimal"]

logger = logging.getLogger(__name__)

# The dynamic programme runs over at most m cut candidates per row,
# m = clip(max(8 k, n / 64), 256, 4096) for rows of length n. m depends on
# the row length and k only, so a 2-D input gives the same result as its
# rows clustered one by one.
_GRID_MIN = 256
_GRID_MAX = 4096
_GRID_PER_CLUSTER = 8
_GRID_VALUES_PER_CUT = 64


# The "dp" init runs the same programme on a coarser grid (at least this many cuts) and
# leaves the rest to Lloyd. On the Hessian-weighted rows of a calibrated 6-layer BERT
# (20,736 rows of 384 and 1,536 values, 3 and 4 bits) its weighted SSE after Lloyd was
# within 0.21 % of method="optimal"'s, and Lloyd's from the linear init 4.8-5.7 % above
# it, at Lloyd's cost: 2.4-2.9 s against 2.2-3.2 s, "optimal" 4.2-5.9 s
# (benchmarks/results/post_training_init.txt).
_SEED_GRID_MIN = 128


def _grid_size(n: int, k: int, floor: int = _GRID_MIN) -> int:
    """Number m of cut candidates per row of length ``n`` for ``k`` clusters."""
    return int(np.clip(max(_GRID_PER_CLUSTER * k, n // _GRID_VALUES_PER_CUT), floor, _GRID_MAX))


def _dc_levels(m: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Breadth-first divide-and-conquer schedule over columns 0..m-1.

    Each level lists the middle column of every open interval [a, b] and the
    already solved neighbours a - 1 and b + 1 (-1 and m stand for "none"),
    whose argmins bound the middle column's argmin (it is monotone).
    """
    levels = []
    a, b = np.array([0]), np.array([m - 1])
    while len(a):
        mid = (a + b) // 2
        levels.append((mid, a - 1, b + 1))
        a, b = np.concatenate([a, mid + 1]), np.concatenate([mid - 1, b])
        keep = a <= b
        a, b = a[keep], b[keep]
        order = np.argsort(a, kind="stable")
        a, b = a[order], b[order]
    return levels


def _optimal_cuts(
    rows: SortedRows, grid: np.ndarray, k: int, use_kernel: bool = True
) -> np.ndarray:
    """Minimum-SSE partition into k segments with cuts restricted to ``grid``.

    ``grid`` (B, m) holds ascending cut positions per row, from 0 to nv
    (repeats allowed: they make empty segments, which cost 0). Costs are
    exact (prefix sums on the real data). D_c[j] = min_i D_{c-1}[i] +
    cost(i, j) is solved for every layer c by divide and conquer over j:
    squared error is a Monge cost, so the (leftmost) argmin is monotone in j
    and, across layers, never below the previous layer's. All rows and all
    columns of a level are evaluated at once. O(k m log m) per row.
    ``use_kernel`` runs each row's recursion as one numba loop (same cuts; False keeps
    the numpy levels, which the tests compare it with).
    Returns the cuts (B, k+1) as data positions.
    """
    B, m = grid.shape
    Wg, Sg, Qg = rows.wsum(grid), rows.xsum(grid), rows.qsum(grid)
    if use_kernel and kernels.AVAILABLE:
        cut_idx = kernels.dp_cut_indices(
            np.ascontiguousarray(Wg), np.ascontiguousarray(Sg), np.ascontiguousarray(Qg), k
        )
        return np.take_along_axis(grid, cut_idx, axis=1)
    D = Qg - Sg * Sg / np.maximum(Wg, TINY)
    args = np.zeros((k, B, m), dtype=np.int32)
    levels = _dc_levels(m)
    roff = (np.arange(B) * m)[:, None]
    Wf, Sf = Wg.ravel(), Sg.ravel()
    for c in range(1, k):
        Af = (D - Qg).ravel()
        prev = args[c - 1]
        # Columns m (sentinel "no left neighbour": argmin 0) and m + 1 ("no
        # right neighbour": unbounded) follow the real ones.
        best = np.zeros((B, m + 2), dtype=np.int64)
        best[:, m + 1] = m
        Dn = np.empty_like(D)
        last = c == k - 1
        for mid, left, right in (
            [(np.array([m - 1]), np.array([-1]), np.array([m]))] if last else levels
        ):
            lo = np.maximum(best[:, np.where(left < 0, m, left)], prev[:, mid])
            hi = np.minimum(best[:, np.where(right >= m, m + 1, right)], mid[None, :])
            hi = np.maximum(hi, lo)
            fj = (mid[None, :] + roff).ravel()
            bi, vmin = _segment_argmin(Af, Wf, Sf, (lo + roff).ravel(), (hi + roff).ravel(), fj)
            best[:, mid] = (bi - np.repeat(roff[:, 0], len(mid))).reshape(lo.shape)
            Dn[:, mid] = vmin.reshape(lo.shape) + Qg[:, mid]
        args[c] = best[:, :m]
        D = Dn
    j = np.full(B, m - 1, dtype=np.int64)
    rws = np.arange(B)
    cut_idx = np.empty((B, k + 1), dtype=np.int64)
    cut_idx[:, k] = j
    for c in range(k - 1, -1, -1):
        j = args[c][rws, j].astype(np.int64)
        cut_idx[:, c] = j
    return np.take_along_axis(grid, cut_idx, axis=1)


def _segment_argmin(
    Af: np.ndarray, Wf: np.ndarray, Sf: np.ndarray, lo: np.ndarray, hi: np.ndarray, fj: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each e: leftmost argmin over i in [lo_e, hi_e] of A_i - (S_j - S_i)^2 / (W_j - W_i).

    j = fj_e; all indices are flat. Returns (argmin, min). Short spans are
    evaluated as a padded rectangle (fast); the few long ones (where the
    argmin jumps) are flattened and reduced with reduceat.
    """
    span = hi - lo + 1
    L0 = max(4, 2 * int(np.ceil(span.mean())))
    short = span <= L0
    bi = np.empty(len(lo), dtype=np.int64)
    vmin = np.empty(len(lo), dtype=np.float64)
    Wj, Sj = Wf[fj], Sf[fj]
    s_idx = np.flatnonzero(short) if not short.all() else slice(None)
    if short.any():
        slo, shi = lo[s_idx], hi[s_idx]
        L = int(span[s_idx].max())
        # Padding repeats the span's last candidate: never a leftmost argmin.
        ii = slo[:, None] + np.arange(L)[None, :]
        np.minimum(ii, shi[:, None], out=ii)
        # In place: this is the DP's inner loop.
        dW = Wf[ii]
        np.subtract(Wj[s_idx][:, None], dW, out=dW)
        np.maximum(dW, TINY, out=dW)
        dS = Sf[ii]
        np.subtract(Sj[s_idx][:, None], dS, out=dS)
        np.multiply(dS, dS, out=dS)
        np.divide(dS, dW, out=dS)
        v = Af[ii]
        np.subtract(v, dS, out=v)
        am = v.argmin(axis=1)
        r = np.arange(len(am))
        bi[s_idx] = ii[r, am]
        vmin[s_idx] = v[r, am]
    if not short.all():
        g = np.flatnonzero(~short)
        sp = span[g]
        total = int(sp.sum())
        starts = np.cumsum(sp) - sp
        fi = np.arange(total) - np.repeat(starts - lo[g], sp)
        owner = np.repeat(np.arange(len(g)), sp)
        dW = Wj[g][owner] - Wf[fi]
        dS = Sj[g][owner] - Sf[fi]
        v = Af[fi] - dS * dS / np.maximum(dW, TINY)
        vm = np.minimum.reduceat(v, starts)
        cand = np.where(v == vm[owner], np.arange(total), total)
        bi[g] = fi[np.minimum.reduceat(cand, starts)]
        vmin[g] = vm
    return bi, vmin


def _grid(rows: SortedRows, size: int) -> np.ndarray:
    """Cut candidates (B, size + 1) for the DP, ascending, from 0 to nv.

    A row with at most ``size`` distinct values gets every boundary between
    distinct values (so its DP is exact). A larger row gets half its cuts at
    equal-weight quantiles (resolution where the data are dense) and half at
    equally spaced values (resolution in the tails, where k-means places
    clusters more densely than the data), each moved to the start of its run
    of equal values so that no cut splits equal values.
    """
    B = rows.B
    start = run_starts(rows)
    d = start.sum(axis=1)
    out = np.broadcast_to(rows.nv[:, None], (B, size + 1)).copy()
    small = d <= size
    if small.any():
        st = start[small]
        rank = np.cumsum(st, axis=1) - 1
        rr, cc = np.nonzero(st)
        sub = out[small]
        sub[rr, rank[rr, cc]] = cc
        out[small] = sub
    big = ~small
    if big.any():
        sub = rows.subset(np.flatnonzero(big))
        nq = size // 2
        nw = size - nq
        t = (np.arange(1, nq) / nq)[None, :] * sub.total_w[:, None]
        if sub.cw is None:
            q = np.round(t).astype(np.int64)
        else:
            q = searchsorted_rows(sub.cw, t, right=False)
        vals = sub.lo[:, None] + (sub.hi - sub.lo)[:, None] * (np.arange(1, nw) / nw)[None, :]
        wcut = searchsorted_rows(sub.s, vals, right=False)
        cand = np.concatenate([q, wcut], axis=1)
        cand = np.clip(cand, 0, sub.nv[:, None])
        inside = cand < sub.nv[:, None]
        v = gather(sub.s, np.minimum(cand, sub.nv[:, None] - 1))
        snapped = searchsorted_rows(sub.s, v, right=False)
        cand = np.where(inside, snapped, sub.nv[:, None])
        cand = np.sort(cand, axis=1)
        dup = np.zeros(cand.shape, dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        dup |= cand == 0
        cand = np.sort(np.where(dup, sub.nv[:, None], cand), axis=1)
        g = np.empty((sub.B, size + 1), dtype=np.int64)
        g[:, 0] = 0
        g[:, 1 : cand.shape[1] + 1] = cand
        g[:, cand.shape[1] + 1 :] = sub.nv[:, None]
        out[big] = g
    # Trailing columns that are nv in every row only add empty segments.
    width = int((out < rows.nv[:, None]).sum(axis=1).max()) + 1
    return out[:, : max(width, 2)]


def _segment_means(rows: SortedRows, cuts: np.ndarray) -> np.ndarray:
    """The means (B, k) of the segments between ``cuts``, ascending."""
    W, S = segment_stats(rows, cuts)
    with np.errstate(divide="ignore", invalid="ignore"):
        c0 = rows.shift[:, None] + S / W
    # An empty DP segment (only possible on a coarse grid) gets a placeholder
    # at its cut; Lloyd's re-seeding fills it.
    return np.where(W > 0, c0, gather(rows.s, np.minimum(cuts[:, :-1], rows.nv[:, None] - 1)))


def dp_seed(rows: SortedRows, k: int) -> np.ndarray:
    """Initial centroids (B, k): the optimal partition over a coarse grid of cuts.

    The dynamic programme of :func:`optimal` on ``clip(max(8 k, n // 64), 128, 4096)``
    cut candidates (every boundary between distinct values where a row has at most that
    many), without the Lloyd refinement and without the Lloyd run from another init: the
    ``init="dp"`` of :func:`~torchprune_share.kmeans.kmeans1d`, which Lloyd then refines.

    Example:
        >>> from torchprune_share.kmeans.rows import SortedRows
        >>> rows = SortedRows(np.array([[0.0, 0.1, 0.9, 1.0, 5.0]]), None, np.array([5]))
        >>> dp_seed(rows, 2)
        array([[0.5, 5. ]])
    """
    grid = _grid(rows, _grid_size(rows.L, k, floor=_SEED_GRID_MIN))
    return _segment_means(rows, _optimal_cuts(rows, grid, k))


def optimal(
    rows: SortedRows,
    k: int,
    init: str,
    generator: torch.Generator | None,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal k-means of every row of ``rows``, never worse than Lloyd.

    The DP runs on ``m = clip(max(8 k, n // 64), 256, 4096)`` cut candidates
    (n the row length; every boundary between distinct values if there are
    at most m, else the grid of :func:`_grid`), Lloyd refines its result on
    the real data, and Lloyd from ``init`` also runs: the better of the two
    is kept per row. Returns ``(centroids, cuts, ok)`` as
    :func:`~torchprune_share.kmeans.lloyd.lloyd` does.

    Example:
        >>> from torchprune_share.kmeans.rows import SortedRows
        >>> rows = SortedRows(np.array([[0.0, 0.1, 0.9, 1.0, 5.0]]), None, np.array([5]))
        >>> optimal(rows, 2, "linear", None, 300, 1e-7)[0]
        array([[0.5, 5. ]])
    """
    c0 = _segment_means(rows, _optimal_cuts(rows, _grid(rows, _grid_size(rows.L, k)), k))
    c_dp, p_dp, ok_dp = lloyd(rows, c0, max_iter, tol)
    c_ll, p_ll, ok_ll = lloyd(rows, init_centroids(rows, k, init, generator), max_iter, tol)
    e_dp = np.where(ok_dp, partition_sse(rows, p_dp), np.inf)
    e_ll = np.where(ok_ll, partition_sse(rows, p_ll), np.inf)
    take_ll = e_ll < e_dp
    if take_ll.any():
        logger.debug("optimal: Lloyd beat the grid DP on %d of %d rows", int(take_ll.sum()), rows.B)
    return (
        np.where(take_ll[:, None], c_ll, c_dp),
        np.where(take_ll[:, None], p_ll, p_dp),
        ok_dp | ok_ll,
    )
