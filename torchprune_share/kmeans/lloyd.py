"""Lloyd's algorithm on sorted rows: one implementation for 1-D and batched input.

A 1-D input is the block of one row, so both take exactly the same steps.
One iteration costs O(k log n) per row: the k - 1 decision boundaries are
searched in the sorted values and every cluster's mean comes from prefix
sums. Lloyd's quality at 8 bits is decided by what happens to starved
clusters (a linear init leaves dozens empty): empty clusters are re-seeded
by splitting the clusters whose split lowers the error most, and
merge-and-split moves hand starved clusters over the same way, which keeps
Lloyd within a few percent of the optimum where plain Lloyd (and
scikit-learn) end at 1.5-2.7x. Every step lowers the weighted SSE or leaves
it unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

from .rows import TINY, SortedRows, segment_stats

__all__ = ["lloyd"]

logger = logging.getLogger(__name__)

# Lloyd may need extra iterations past max_iter only while some cluster is
# still empty (each iteration re-seeds empty clusters); this bounds them.
_EXTRA_ITERS_PER_CLUSTER = 2

# Merge-and-split moves are tried every this many iterations (and at
# convergence).
_SWAP_EVERY = 10


def lloyd(
    rows: SortedRows, cents: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted Lloyd on every row of ``rows``, from the centroids ``cents`` (B, k).

    An iteration assigns every value to its nearest centroid (a value
    exactly on a midpoint to the lower one), moves every centroid to the
    weighted mean of its cluster, re-seeds empty clusters (:func:`_reseed`)
    and, every ``_SWAP_EVERY`` iterations and at convergence, applies
    merge-and-split moves (:func:`_swap`). A row stops when its partition
    repeats, when no centroid moves by more than ``tol`` times its range,
    or after ``max_iter`` iterations (later only while a cluster is empty,
    at most ``2 k`` more); each iteration works on the rows still active.

    Returns:
        ``(centroids, cuts, ok)``: centroids (B, k) ascending, the cuts
        (B, k+1) of the partition whose means they are, and whether that
        partition has k non-empty segments.

    Example:
        >>> from torchprune_share.kmeans.rows import SortedRows
        >>> rows = SortedRows(np.array([[0.0, 1.0, 9.0, 10.0]]), None, np.array([4]))
        >>> lloyd(rows, np.array([[0.0, 1.0]]), 300, 0.0)[0]
        array([[0.5, 9.5]])
    """
    B, k = cents.shape
    cents = np.sort(cents, axis=1)
    lim = tol * np.maximum(rows.hi - rows.lo, TINY)
    part = rows.cuts(cents)
    ok = np.zeros(B, dtype=bool)
    prev = part.copy()
    act = np.arange(B)
    hard_cap = max_iter + _EXTRA_ITERS_PER_CLUSTER * k
    it = 0
    while len(act) and it < hard_cap:
        it += 1
        # While every row is active (always, for 1-D input) the whole arrays
        # are used: no gathers and scatters, a few microseconds per iteration.
        full = len(act) == B
        c = cents if full else cents[act]
        last = None if it == 1 else prev if full else prev[act]
        pos = rows.cuts(c, None if full else act, hint=last)
        new, new_pos, new_ok, done = _step(
            rows, act, full, c, pos, last, lim if full else lim[act], it < max_iter, it
        )
        if full:
            cents, part, ok, prev = new, new_pos.copy(), new_ok, pos
        else:
            cents[act], part[act], ok[act], prev[act] = new, new_pos, new_ok, pos
        act = act[~done]
    logger.debug("lloyd: %d iterations, %d/%d rows not converged", it, len(act), B)
    return cents, part, ok


def _step(
    rows: SortedRows,
    act: np.ndarray,
    full: bool,
    c: np.ndarray,
    pos: np.ndarray,
    last: np.ndarray | None,
    lim: np.ndarray,
    may_swap: bool,
    it: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One Lloyd iteration of the rows ``act`` (all rows if ``full``).

    ``c`` are their centroids, ``pos`` the cuts of the nearest-centroid
    partition, ``last`` the cuts of the previous iteration. Returns the new
    centroids, the cuts of the partition whose means they are, whether that
    partition has no empty segment, and which rows are done.
    """
    W, S = segment_stats(rows, pos, None if full else act)
    any_empty = (W <= 0).any(axis=1)
    shift = (rows.shift if full else rows.shift[act])[:, None]
    new_ok = ~any_empty
    new_pos = pos
    if any_empty.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            new = shift + S / W
        e = np.flatnonzero(any_empty)
        new_pos = pos.copy()
        new[e], new_pos[e], new_ok[e] = _reseed(rows, act[e], pos[e], W[e], S[e], new[e], c[e])
    else:
        new = shift + S / W
    # A centroid may be +inf where a random init found fewer than k values
    # of (float64-visible) weight: inf - inf is NaN, and NaN <= lim is False.
    with np.errstate(invalid="ignore"):
        done = ~any_empty & (np.abs(new - c).max(axis=1) <= lim)
    if last is not None:
        # Same partition as last time: a fixed point (the means repeat).
        done |= ~any_empty & (pos == last).all(axis=1)
    if not may_swap:
        # Past max_iter only rows that still have empty clusters go on.
        return new, new_pos, new_ok, done | ~any_empty
    if it % _SWAP_EVERY and not done.any():
        return new, new_pos, new_ok, done
    sw = np.flatnonzero(~any_empty & (done | (it % _SWAP_EVERY == 0)))
    if sw.size:
        c2, p2, moved = _swap(rows, act[sw], pos[sw], W[sw], S[sw], new[sw])
        if moved.any():
            m = sw[moved]
            new_pos = new_pos.copy()
            new[m], new_pos[m] = c2[moved], p2[moved]
            done[m] = False
    return new, new_pos, new_ok, done


def _split_gains(
    rows: SortedRows, r: np.ndarray, pos: np.ndarray, W: np.ndarray, S: np.ndarray, mean: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best split of every cluster into two: (gain, left mean, right mean, cut).

    2-means inside the cluster's run, three steps from a split at its mean;
    the SSE drops by ``gain = W_L W_R / W (mu_L - mu_R)^2``. Clusters that
    cannot split (empty, or a single distinct value) get gain -1.
    """
    a, b = pos[:, :-1], pos[:, 1:]
    nonempty = W > 0
    ca, cb = rows.wsum(a, r), rows.xsum(a, r)
    shift = rows.shift[r][:, None]
    split_val = np.where(nonempty, mean, rows.lo[r][:, None])
    gain = np.full(W.shape, -1.0)
    mL, mR, qbest = mean, mean, a
    base = (r * rows.L)[:, None]
    for _ in range(3):
        if len(r) == 1:
            # One row: numpy's searchsorted beats the vectorised bisection.
            q = np.clip(np.searchsorted(rows.s[r[0]], split_val[0], side="right"), a[0], b[0])[None]
        else:
            q = rows.count_le(split_val, base, a, b)
        WL = rows.wsum(q, r) - ca
        SL = rows.xsum(q, r) - cb
        WR, SR = W - WL, S - SL
        good = nonempty & (WL > 0) & (WR > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            muL = shift + SL / WL
            muR = shift + SR / WR
            g = WL * WR / W * (muL - muR) ** 2
        better = good & (g > gain)
        gain = np.where(better, g, gain)
        mL = np.where(better, muL, mL)
        mR = np.where(better, muR, mR)
        qbest = np.where(better, q, qbest)
        split_val = np.where(good, 0.5 * (muL + muR), split_val)
    return gain, mL, mR, qbest


def _swap(
    rows: SortedRows, r: np.ndarray, pos: np.ndarray, W: np.ndarray, S: np.ndarray, mean: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge-and-split moves that lower the SSE (no cluster is empty here).

    Merging adjacent clusters j, j+1 costs ``W_j W_j+1 / (W_j + W_j+1)
    (mu_j - mu_j+1)^2``; splitting a cluster gains the amount of
    :func:`_split_gains`. Pairs at a local minimum of the merge cost are
    disjoint; the t cheapest of them are merged and the t clusters of
    largest gain (outside those pairs) are split, for the largest t where
    every gain exceeds its merge cost, so the SSE strictly drops. Lloyd with
    a linear init leaves many clusters starved in the tails at 8 bits;
    these moves hand them to where they reduce the error most.
    Returns the new centroids (A, k), their partition's cuts and which rows
    moved.
    """
    A, k = mean.shape
    moved = np.zeros(A, dtype=bool)
    if k < 3:
        return mean, pos, moved
    gain, mL, mR, qbest = _split_gains(rows, r, pos, W, S, mean)
    Wl, Wr = W[:, :-1], W[:, 1:]
    cost = Wl * Wr / (Wl + Wr) * (mean[:, :-1] - mean[:, 1:]) ** 2
    padded = np.pad(cost, ((0, 0), (1, 1)), constant_values=np.inf)
    local = (cost < padded[:, :-2]) & (cost <= padded[:, 2:])
    in_pair = np.zeros(W.shape, dtype=bool)
    in_pair[:, :-1] |= local
    in_pair[:, 1:] |= local
    g_sorted = -np.sort(-np.where(in_pair, -1.0, gain), axis=1)[:, : k - 1]
    c_sorted = np.sort(np.where(local, cost, np.inf), axis=1)
    t = np.cumprod(g_sorted > c_sorted, axis=1).sum(axis=1)
    moved = t > 0
    if not moved.any():
        return mean, pos, moved
    c_rank = np.argsort(np.argsort(np.where(local, cost, np.inf), axis=1, kind="stable"), axis=1)
    merge = local & (c_rank < t[:, None])
    g_rank = np.argsort(np.argsort(-np.where(in_pair, -1.0, gain), axis=1, kind="stable"), axis=1)
    split = ~in_pair & (g_rank < t[:, None]) & (gain > 0)
    first = np.zeros(W.shape, dtype=bool)
    first[:, :-1] = merge
    second = np.zeros(W.shape, dtype=bool)
    second[:, 1:] = merge
    shift = rows.shift[r][:, None]
    Sn = np.concatenate([S[:, 1:], np.zeros((A, 1))], axis=1)
    Wn = np.concatenate([W[:, 1:], np.ones((A, 1))], axis=1)
    merged = shift + (S + Sn) / (W + Wn)
    prim = np.where(first, merged, np.where(split, mL, mean))
    prim = np.where(second, np.inf, prim)
    new_c = np.sort(np.concatenate([prim, np.where(split, mR, np.inf)], axis=1), axis=1)[:, :k]
    big = np.iinfo(np.int64).max
    a = pos[:, :-1]
    cand = np.concatenate([np.where(second, big, a), np.where(split, qbest, big)], axis=1)
    new_pos = np.empty_like(pos)
    new_pos[:, :k] = np.sort(cand, axis=1)[:, :k]
    new_pos[:, k] = pos[:, k]
    return new_c, new_pos, moved


def _reseed(
    rows: SortedRows,
    r: np.ndarray,
    pos: np.ndarray,
    W: np.ndarray,
    S: np.ndarray,
    mean: np.ndarray,
    old: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-seed empty clusters by splitting the clusters that gain most.

    Each row with e empty clusters splits
    its e clusters of largest split gain (:func:`_split_gains`; a
    cluster with a single distinct value cannot split) and drops the empty centroids. Empty clusters beyond what
    can be split this round keep their old centroid and wait for the next.
    Returns the new centroids (A, k), the cuts (A, k+1) of the partition
    whose means they are, and whether that partition has k segments.
    """
    A, k = mean.shape
    a = pos[:, :-1]
    nv = rows.nv[r]
    nonempty = W > 0
    gain, mL, mR, qbest = _split_gains(rows, r, pos, W, S, mean)
    n_empty = (~nonempty).sum(axis=1)
    order = np.argsort(-gain, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(k), order.shape), axis=1)
    split = (rank < n_empty[:, None]) & (gain > 0)
    n_split = split.sum(axis=1)
    empty_rank = np.cumsum(~nonempty, axis=1) - 1
    keep_empty = ~nonempty & (empty_rank >= n_split[:, None])
    prim = np.where(split, mL, np.where(keep_empty, old, mean))
    prim = np.where(nonempty | keep_empty, prim, np.inf)
    new_c = np.sort(np.concatenate([prim, np.where(split, mR, np.inf)], axis=1), axis=1)[:, :k]
    big = np.iinfo(np.int64).max
    cand = np.concatenate([np.where(nonempty, a, big), np.where(split, qbest, big)], axis=1)
    cand = np.sort(cand, axis=1)[:, :k]
    full = (cand != big).all(axis=1)
    new_pos = np.empty((A, k + 1), dtype=np.int64)
    new_pos[:, :k] = np.where(cand == big, nv[:, None], cand)
    new_pos[:, k] = nv
    return new_c, new_pos, full
