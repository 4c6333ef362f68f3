"""Turn float64 centroids into the result: output dtype, no empty cluster, labels.

:func:`finalize` rounds the centroids to the output dtype and repairs the
rare row where rounding (or a stop right after a re-seed) leaves a centroid
owning no point; :func:`nearest_labels` labels every entry, zero-weight ones
included, with its nearest centroid, exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .rows import SortedRows, gather, run_starts, searchsorted_rows, segment_stats

__all__ = ["cast_to", "distinct_centroids", "finalize", "nearest_labels"]

logger = logging.getLogger(__name__)

# Most cells per row of the label look-up table (cells over the data range).
_LUT_CELLS = 1 << 16


def cast_to(c: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Round float64 centroids to the output dtype (and back to float64).

    Example:
        >>> cast_to(np.array([0.1]), torch.float16)
        array([0.09997559])
    """
    return torch.from_numpy(c).to(dtype).to(torch.float64).numpy()


def finalize(
    rows: SortedRows, cents: np.ndarray, part: np.ndarray, ok: np.ndarray, dtype: torch.dtype
) -> np.ndarray:
    """Centroids in the output dtype (as float64) such that each owns a point.

    The returned centroids must each own at least one weighted point under
    the nearest-centroid rule, after rounding to the output dtype. Lloyd's
    result already does, except in degenerate cases (rounding merges two
    centroids of clusters closer than an ulp, or max_iter hit right after a
    re-seed). Such a row is repaired by "snapping": each centroid becomes the
    data value nearest to it inside its own (non-empty) segment; distinct
    data values, one per segment, each own themselves.
    """
    cc = cast_to(np.clip(cents, rows.lo[:, None], rows.hi[:, None]), dtype)
    W, _ = segment_stats(rows, rows.cuts(cc))
    bad = ~(W > 0).all(axis=1)
    if not bad.any():
        return cc
    logger.debug("kmeans1d: snapping %d row(s) to data values", int(bad.sum()))
    r = np.flatnonzero(bad)
    sub = rows.subset(r)
    k = cents.shape[1]
    pos = part[r]
    good_part = ok[r] & (np.diff(pos, axis=1) > 0).all(axis=1)
    if not good_part.all():
        # Last resort: the distinct values cut at their k - 1 widest gaps (single linkage),
        # on the data themselves. Lloyd gets here when values closer than float64 can
        # tell apart around the row's shift collapse into one run it cannot split; evenly
        # spaced ranks dropped the largest value instead (SSE 1 against 2e-37 on
        # [-1, 0, 6e-19, 3e-17, 1, 2, 3, 4], k = 7).
        starts = run_starts(sub)
        fb = np.empty((sub.B, k + 1), dtype=np.int64)
        for i in range(sub.B):  # only reached in degenerate cases
            idx = np.flatnonzero(starts[i])
            gaps = np.diff(sub.s[i, idx].astype(np.float64))
            widest = np.sort(np.argsort(-gaps, kind="stable")[: max(k - 1, 0)])
            cut = np.concatenate([idx[:1], idx[widest + 1]])
            # Fewer distinct values than k: the last ones repeat (empty segments).
            fb[i, :k] = np.concatenate([cut, np.full(k - len(cut), cut[-1])])
            fb[i, k] = sub.nv[i]
        pos = np.where(good_part[:, None], pos, fb)
    a, b = pos[:, :-1], pos[:, 1:] - 1
    c = cents[r]
    j = np.clip(searchsorted_rows(sub.s, c, right=False), a, b)
    jm = np.clip(j - 1, a, b)
    vj, vm = gather(sub.s, j), gather(sub.s, jm)
    snap = np.where(np.abs(vm - c) <= np.abs(vj - c), vm, vj)
    snap = np.where(good_part[:, None], snap, gather(sub.s, a))
    cc[r] = cast_to(snap, dtype)
    return cc


def _round_down_f32(m: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 value: x32 <= m  iff  x32 <= result."""
    m32 = m.astype(np.float32)
    over = m32.astype(np.float64) > m
    if over.any():
        m32[over] = np.nextafter(m32[over], np.float32(-np.inf))
    return m32


def nearest_labels(
    xn: np.ndarray, cents: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: np.ndarray
) -> None:
    """Nearest-centroid index of every entry of xn (B, n) into ``out``; ties -> lower.

    label = number of midpoints strictly below x. Comparisons are exact: for
    float32 data the float64 midpoints are rounded down to float32, which
    does not change any ``x <= midpoint`` test.

    A binary search per entry is memory-bound; instead a look-up table over
    a uniform grid of cells on [lo, hi] gives a guess, which is corrected one
    step at a time until ``mids[label-1] < x <= mids[label]`` holds
    everywhere (usually after one pass), so the result is exact. Rows that
    would need many passes (many midpoints inside one cell) fall back to
    searchsorted.

    Example:
        >>> out = np.empty((1, 4), dtype=np.int64)
        >>> xn = np.array([[-5.0, 0.5, 0.6, 9.0]])
        >>> nearest_labels(xn, np.array([[0.0, 1.0]]), np.zeros(1), np.ones(1), out)
        >>> out
        array([[0, 0, 1, 1]])
    """
    B, k = cents.shape
    n = xn.shape[1]
    if k == 1:
        out[:] = 0
        return
    mids = 0.5 * (cents[:, 1:] + cents[:, :-1])
    if xn.dtype == np.float32:
        mids = _round_down_f32(mids)
    if n <= 64 or k <= 8:
        # Few midpoints: a binary search stays in cache and beats the table.
        out[:] = searchsorted_rows(mids, xn, right=False)
        return
    cells = int(min(_LUT_CELLS, max(1024, 16 * k, n // 16)))
    span = hi - lo
    inv = np.where(span > 0, cells / np.where(span > 0, span, 1.0), 0.0)
    step = 1.0 / np.where(inv > 0, inv, 1.0)
    centers = lo[:, None] + (np.arange(cells) + 0.5)[None, :] * step[:, None]
    roff = (np.arange(B) * k).astype(np.int32)[:, None]
    # Labels are kept as flat indices r*k + label, so every look-up below is
    # a single gather.
    table = searchsorted_rows(mids, centers.astype(mids.dtype), right=False).astype(np.int32)
    table += roff
    up = np.concatenate([mids, np.full((B, 1), np.inf, mids.dtype)], axis=1).ravel()
    down = np.concatenate([np.full((B, 1), -np.inf, mids.dtype), mids], axis=1).ravel()
    t = xn - lo.astype(xn.dtype)[:, None]
    t *= inv.astype(xn.dtype)[:, None]
    cell = t.astype(np.int32)
    del t
    np.clip(cell, 0, cells - 1, out=cell)
    cell += (np.arange(B, dtype=np.int32) * cells)[:, None]
    lab = table.ravel()[cell]
    del cell
    for _ in range(4):
        inc = xn > up[lab]
        dec = xn <= down[lab]
        if not (inc.any() or dec.any()):
            break
        lab += inc
        lab -= dec
    else:
        bad = np.flatnonzero((xn > up[lab]).any(axis=1) | (xn <= down[lab]).any(axis=1))
        if bad.size:
            lab[bad] = searchsorted_rows(mids[bad], xn[bad], right=False) + roff[bad]
    lab -= roff
    out[:] = lab


def distinct_centroids(rows: SortedRows, k: int) -> np.ndarray:
    """Each row's distinct values, padded with its largest value (rows with d <= k)."""
    start = run_starts(rows)
    out = np.broadcast_to(rows.hi[:, None], (rows.B, k)).copy()
    rank = np.cumsum(start, axis=1) - 1
    rr, cc = np.nonzero(start)
    out[rr, rank[rr, cc]] = rows.s[rr, cc]
    return out
