"""Sorted rows with float64 prefix sums: the data structure of 1-D k-means.

After one sort every cluster of 1-D k-means is a contiguous run of the
sorted values, and prefix sums of the weights ``w``, of ``w * x`` and of
``w * x**2`` give the weight, mean and squared error of any run in O(1).
Everything else in :mod:`torchprune_share.kmeans` works on a
:class:`SortedRows` block: B rows clustered independently, a 1-D input being
the block of one row.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "TINY",
    "SortedRows",
    "distinct_counts",
    "gather",
    "partition_sse",
    "prefix_sums",
    "run_starts",
    "searchsorted_rows",
    "segment_stats",
    "sort_rows",
]

# Guards divisions by a segment weight that may be zero.
TINY = 1e-300

# A moved cut is looked for among this many neighbours before bisecting.
_CUT_WINDOW = 8


def gather(a: np.ndarray, idx: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """``a[r[i], idx[i, ...]]`` for every i (r defaults to all rows in order)."""
    if r is None:
        if a.shape[0] == 1:
            return a[0][idx]
        if idx.ndim == 2:
            return np.take_along_axis(a, idx, axis=1)
        r = np.arange(a.shape[0])
    base = (r * a.shape[1]).reshape((-1,) + (1,) * (idx.ndim - 1))
    return a.ravel()[idx + base]


def searchsorted_rows(
    s: np.ndarray, v: np.ndarray, right: bool, r: np.ndarray | None = None
) -> np.ndarray:
    """Per-row searchsorted of ``v`` (A, m) into the sorted rows ``s[r]``."""
    side = "right" if right else "left"
    if r is not None and len(r) == s.shape[0] and (r == np.arange(len(r))).all():
        r = None
    if r is not None:
        if len(r) == 1:
            return np.searchsorted(s[r[0]], v[0], side=side)[None]
        s = s[r]
    if s.shape[0] == 1:
        return np.searchsorted(s[0], v[0], side=side)[None]
    return torch.searchsorted(
        torch.from_numpy(s), torch.from_numpy(np.ascontiguousarray(v)), right=right
    ).numpy()


class SortedRows:
    """A block of B sorted rows with float64 prefix sums.

    Row r holds ``nv[r]`` weighted values ``s[r, :nv[r]]`` (ascending) and is
    padded with +inf, so a searchsorted of finite values never passes nv.
    Prefix sums are taken of ``y = s - shift`` (shift = row median) to keep
    their magnitude, and so the cancellation in ``Q - S**2 / W``, small.
    Unit weights (the common case: no weights, or 0/1 masks) keep no weight
    array; the weight of a run is then its length.

    Args:
        s: (B, L) rows sorted ascending over their first ``nv[r]`` entries.
        w: (B, L) weights in the same order, or None for unit weights.
        nv: (B,) number of weighted values per row.

    Example:
        >>> rows = SortedRows(np.array([[1.0, 2.0, 4.0]]), np.array([[1.0, 1.0, 2.0]]), np.array([3]))
        >>> rows.total_w, rows.cuts(np.array([[1.5, 4.0]]))
        (array([4.]), array([[0, 2, 3]]))
        >>> W, S = segment_stats(rows, np.array([[0, 2, 3]]))
        >>> W, rows.shift[:, None] + S / W
        (array([[2., 2.]]), array([[1.5, 4. ]]))
    """

    def __init__(self, s: np.ndarray, w: np.ndarray | None, nv: np.ndarray) -> None:
        B, L = s.shape
        self.B, self.L = B, L
        self.nv = nv.astype(np.int64)
        s64 = s.astype(np.float64, copy=True)
        all_valid = bool((self.nv == L).all())
        invalid = None if all_valid else np.arange(L)[None, :] >= self.nv[:, None]
        if invalid is not None:
            s64[invalid] = np.inf
        self.s = s64
        rows = np.arange(B)
        has = self.nv > 0
        self.lo = np.where(has, s64[:, 0], 0.0)
        self.hi = np.where(has, s64[rows, np.maximum(self.nv - 1, 0)], 0.0)
        self.shift = np.where(has, s64[rows, self.nv // 2 * has], 0.0)
        self._invalid = invalid
        # Prefix sums are built in place in their own buffer: large
        # temporaries cost page faults on every allocation.
        self.w = None
        self.cw = None
        self.cwx = np.empty((B, L + 1), dtype=np.float64)
        self.cwx[:, 0] = 0.0
        y = self.cwx[:, 1:]
        np.subtract(s64, self.shift[:, None], out=y)
        if invalid is not None:
            y[invalid] = 0.0
        if w is not None:
            wv = w.astype(np.float64, copy=True)
            if invalid is not None:
                wv[invalid] = 0.0
            self.w = wv
            self.cw = prefix_sums(wv)
            y *= wv
        np.cumsum(y, axis=1, out=y)
        self._cwx2: np.ndarray | None = None
        self.total_w = self.wsum(self.nv[:, None])[:, 0]

    @property
    def cwx2(self) -> np.ndarray:
        if self._cwx2 is None:
            out = np.empty((self.B, self.L + 1), dtype=np.float64)
            out[:, 0] = 0.0
            yy = out[:, 1:]
            np.subtract(self.s, self.shift[:, None], out=yy)
            if self._invalid is not None:
                yy[self._invalid] = 0.0
            np.multiply(yy, yy, out=yy)
            if self.w is not None:
                yy *= self.w
            np.cumsum(yy, axis=1, out=yy)
            self._cwx2 = out
        return self._cwx2

    def wsum(self, pos: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        if self.cw is None:
            return pos.astype(np.float64)
        return gather(self.cw, pos, r)

    def xsum(self, pos: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        return gather(self.cwx, pos, r)

    def qsum(self, pos: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        return gather(self.cwx2, pos, r)

    def cuts(
        self,
        centroids: np.ndarray,
        r: np.ndarray | None = None,
        hint: np.ndarray | None = None,
    ) -> np.ndarray:
        """Cut positions (A, k+1) of the nearest-centroid partition of rows r.

        A value exactly on a midpoint goes to the lower cluster (the cut is
        after every value <= the midpoint). ``hint`` (previous cuts) lets
        most cuts be found in a small window around their old position:
        one cache miss instead of log2(n), which is what Lloyd's late
        iterations cost on thousands of rows.
        """
        A, k = centroids.shape
        nv = self.nv if r is None else self.nv[r]
        pos = np.empty((A, k + 1), dtype=np.int64)
        pos[:, 0] = 0
        pos[:, k] = nv
        if k == 1:
            return pos
        mids = 0.5 * (centroids[:, 1:] + centroids[:, :-1])
        if hint is None:
            pos[:, 1:k] = searchsorted_rows(self.s, mids, True, r)
        elif A == 1:
            pos[0, 1:k] = self._moved_cuts_one_row(mids[0], 0 if r is None else int(r[0]), hint[0])
        else:
            pos[:, 1:k] = self._moved_cuts(mids, r, nv, hint)
        return pos

    def _moved_cuts_one_row(self, mids: np.ndarray, row: int, hint: np.ndarray) -> np.ndarray:
        """:meth:`cuts` of one row: numpy's searchsorted on the moved cuts only."""
        s, L = self.s[row], self.L
        p = hint[1:-1].copy()
        stay = (p == 0) | (s[np.maximum(p - 1, 0)] <= mids)
        stay &= (p == L) | (s[np.minimum(p, L - 1)] > mids)
        if not stay.all():
            mv = np.flatnonzero(~stay)
            p[mv] = np.searchsorted(s, mids[mv], side="right")
        return p

    def _moved_cuts(
        self, mids: np.ndarray, r: np.ndarray | None, nv: np.ndarray, hint: np.ndarray
    ) -> np.ndarray:
        """:meth:`cuts` of several rows, each old cut checked before it is searched."""
        # Late Lloyd iterations move few cuts: check every old cut with two
        # look-ups (one cache miss, not log2(n)) and bisect only the moved ones.
        rr = np.arange(self.B) if r is None else r
        L = self.L
        p0 = hint[:, 1:-1]
        base = (rr * L)[:, None]
        flat = self.s.ravel()
        left = (p0 == 0) | (flat[base + np.maximum(p0 - 1, 0)] <= mids)
        right = (p0 == L) | (flat[base + np.minimum(p0, L - 1)] > mids)
        moved = np.flatnonzero(~(left & right))
        p = p0.copy()
        if moved.size:
            # A moved cut usually moves by a few values: look in the next (or
            # previous) _CUT_WINDOW values first, bisect the rest of the row
            # only when it moved further.
            w = _CUT_WINDOW
            lf = left.ravel()[moved]
            p0m = p0.ravel()[moved]
            bm = np.broadcast_to(base, p0.shape).ravel()[moved]
            nvm = np.broadcast_to(nv[:, None], p0.shape).ravel()[moved]
            v = mids.ravel()[moved]
            start = np.where(lf, p0m, p0m - w)
            idx = start[:, None] + np.arange(w)
            inside = (idx >= 0) & (idx < L)
            vals = flat[bm[:, None] + np.clip(idx, 0, L - 1)]
            cnt = ((vals <= v[:, None]) & inside).sum(axis=1)
            # Right move: the first value > v is in the window unless all w
            # are <= v. Left move: the values <= v are a prefix of the window
            # (and everything before it) unless none of it is <= v.
            ans = np.where(lf, p0m + cnt, np.maximum(start, 0) + cnt)
            done = np.where(lf, (cnt < w) | (p0m + w >= nvm), (cnt > 0) | (start <= 0))
            lo = np.where(lf, p0m + w, 0)
            hi = np.where(lf, nvm, np.maximum(p0m - w, 0))
            rest = np.flatnonzero(~done)
            if rest.size:
                ans[rest] = self.count_le(v[rest], bm[rest], lo[rest], np.maximum(hi, lo)[rest])
            p.ravel()[moved] = ans
        return p

    def count_le(
        self, v: np.ndarray, base: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """Number of values <= v in the rows starting at flat offset ``base``.

        The answer is known to lie in [lo, hi]; vectorised bisection.
        """
        lo, hi = lo.copy(), hi.copy()
        flat = self.s.ravel()
        last = self.L - 1
        while True:
            act = lo < hi
            if not act.any():
                return lo
            mid = (lo + hi) >> 1
            le = flat[base + np.minimum(mid, last)] <= v
            lo = np.where(act & le, mid + 1, lo)
            hi = np.where(act & ~le, mid, hi)

    def subset(self, rows: np.ndarray) -> SortedRows:
        """The rows ``rows`` (an index array) as a new block (self if all, in order)."""
        if len(rows) == self.B and (rows == np.arange(self.B)).all():
            return self
        sub = object.__new__(SortedRows)
        sub.B, sub.L = len(rows), self.L
        for name in ("nv", "s", "lo", "hi", "shift", "total_w"):
            setattr(sub, name, getattr(self, name)[rows])
        sub._invalid = None if self._invalid is None else self._invalid[rows]
        sub.w = None if self.w is None else self.w[rows]
        sub.cw = None if self.cw is None else self.cw[rows]
        sub.cwx = self.cwx[rows]
        sub._cwx2 = None if self._cwx2 is None else self._cwx2[rows]
        return sub


def prefix_sums(a: np.ndarray) -> np.ndarray:
    """Row-wise prefix sums (B, L+1) in float64, starting at 0."""
    out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.float64)
    out[:, 0] = 0.0
    np.cumsum(a, axis=1, out=out[:, 1:])
    return out


def segment_stats(
    rows: SortedRows, pos: np.ndarray, r: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weight and centred weighted sum of every segment between cuts."""
    cw = rows.wsum(pos, r)
    cx = rows.xsum(pos, r)
    return np.diff(cw, axis=1), np.diff(cx, axis=1)


def partition_sse(rows: SortedRows, pos: np.ndarray) -> np.ndarray:
    """SSE (B,) of the partition given by cuts, each segment at its mean."""
    W = np.diff(rows.wsum(pos), axis=1)
    S = np.diff(rows.xsum(pos), axis=1)
    Q = np.diff(rows.qsum(pos), axis=1)
    return np.maximum(Q - S * S / np.maximum(W, TINY), 0.0).sum(axis=1)


def run_starts(rows: SortedRows) -> np.ndarray:
    """Mask (B, L) of the first position of every distinct value."""
    s = rows.s
    start = np.empty(s.shape, dtype=bool)
    start[:, 0] = rows.nv > 0
    np.not_equal(s[:, 1:], s[:, :-1], out=start[:, 1:])
    start[:, 1:] &= np.arange(1, rows.L)[None, :] < rows.nv[:, None]
    return start


def sort_rows(
    xn: np.ndarray, wn: np.ndarray | None, unit: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Sort every row's weighted values; zero-weight entries go to the end."""
    if wn is None:
        return np.sort(xn, axis=1), None, np.full(xn.shape[0], xn.shape[1], dtype=np.int64)
    pos = wn > 0
    nv = pos.sum(axis=1).astype(np.int64)
    xm = np.where(pos, xn, np.inf).astype(xn.dtype)
    if unit:
        # Equal non-zero weights scale every mean the same way: the weights
        # only select entries, and a plain sort (not an argsort) suffices.
        return np.sort(xm, axis=1), None, nv
    order = _stable_argsort(xm)
    return gather(xm, order), gather(wn, order), nv


def _stable_argsort(xm: np.ndarray) -> np.ndarray:
    """``np.argsort(xm, axis=1, kind="stable")``, about 2x faster for float32.

    A stable order is unique: by value, equal values by position. For
    float32 it is the plain sort of 64-bit keys (order-preserving bits of
    the value, then the position), which numpy sorts much faster than it
    argsorts floats. -0.0 and 0.0 compare equal, so both get the key of 0.0.
    """
    if xm.dtype != np.float32 or xm.shape[1] >= 1 << 32:
        return np.argsort(xm, axis=1, kind="stable")
    bits = (xm + np.float32(0.0)).view(np.uint32)
    # Negative floats order by their flipped bits, the others by their bits
    # with the sign bit set: unsigned order then equals float order.
    bits = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
    key = bits << np.uint64(32)
    key |= np.arange(xm.shape[1], dtype=np.uint64)
    key.sort(axis=1)
    return (key & np.uint64(0xFFFFFFFF)).astype(np.int64)


def distinct_counts(s: np.ndarray, nv: np.ndarray) -> np.ndarray:
    """Number of distinct values among the first ``nv[r]`` of each sorted row."""
    if s.shape[1] == 0:
        return np.zeros(s.shape[0], dtype=np.int64)
    change = s[:, 1:] != s[:, :-1]
    change &= np.arange(1, s.shape[1])[None, :] < nv[:, None]
    return np.where(nv > 0, change.sum(axis=1) + 1, 0)
