"""One-dimensional k-means: the numeric core of weight sharing.

Deep Compression shares weights by clustering the (surviving) weights of a
layer into ``k = 2**bits`` clusters and storing, per weight, the index of
its cluster. The data are scalars, so everything here exploits 1-D
structure: after one sort every cluster is a contiguous run of the sorted
values, and prefix sums of the weights ``w`` and of ``w * x`` give the
statistics of any run in O(1). One Lloyd iteration then costs
O(k log n) (a ``searchsorted`` of the ``k - 1`` decision boundaries), and an
exact dynamic programme over cut positions is possible.

Lloyd's quality at 8 bits is decided by what happens to starved clusters
(a linear init leaves dozens empty): here empty clusters are re-seeded by
splitting the clusters whose split lowers the error most, and merge-and-
split moves hand starved clusters over the same way, which keeps Lloyd
within a few percent of the optimum where plain Lloyd (and scikit-learn)
end at 1.5-2.7x.

Public API:

* :func:`kmeans1d` clusters a 1-D tensor, or every row of a 2-D tensor
  independently (batched: per-channel codebooks), with Lloyd's algorithm
  (``method="lloyd"``), a globally optimal dynamic programme
  (``method="optimal"``) or scikit-learn's ``KMeans`` (``method="sklearn"``,
  for comparison).
* :func:`sse` is the weighted sum of squared errors in float64 (scikit-learn's
  ``inertia_`` is accumulated in float32 and reads low on large inputs).

All heavy lifting runs on the CPU in numpy (``np.sort`` is about 3x faster
than ``torch.sort`` here); results are returned on the input's device.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["kmeans1d", "sse"]

logger = logging.getLogger(__name__)

INITS = ("linear", "density", "random", "kmeans++")
METHODS = ("lloyd", "optimal", "sklearn")

# method="optimal": the dynamic programme runs over at most m cut candidates
# per row, m = clip(max(8 k, n / 64), 256, 4096) for rows of length n. A row
# with at most m distinct values is solved exactly; a row with more is
# solved on a grid of m cuts (exact costs, restricted cut positions) and then
# refined by Lloyd on the real data. m depends on the row length and k only,
# so a 2-D input gives the same result as its rows clustered one by one.
_GRID_MIN = 256
_GRID_MAX = 4096
_GRID_PER_CLUSTER = 8
_GRID_VALUES_PER_CUT = 64

# 2-D inputs are processed in blocks of rows of about this many elements, to
# bound the float64 working set (several arrays of the block's size).
_BLOCK_ELEMS = 1 << 22

# Lloyd may need extra iterations past max_iter only while some cluster is
# still empty (each iteration re-seeds empty clusters); this bounds them.
_EXTRA_ITERS_PER_CLUSTER = 2

# Most cells per row of the label look-up table (cells over the data range).
_LUT_CELLS = 1 << 16

# Lloyd tries merge-and-split moves every this many iterations (and when it
# has converged).
_SWAP_EVERY = 10

# Lloyd looks for a moved cut among this many neighbours before bisecting.
_CUT_WINDOW = 8

_TINY = 1e-300


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _validate(
    x: torch.Tensor,
    k: int,
    init: str,
    method: str,
    max_iter: int,
    tol: float,
    sample_weight: torch.Tensor | None,
    generator: torch.Generator | None,
) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in (1, 2):
        raise ValueError(f"x must be 1-D (n,) or 2-D (B, n), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    _check_int("k", k, 1)
    _check_int("max_iter", max_iter, 1)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0.0):
        raise ValueError(f"tol must be a float >= 0, got {tol!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    if sample_weight is not None:
        if not isinstance(sample_weight, torch.Tensor):
            raise TypeError(
                f"sample_weight must be a torch.Tensor or None, got {type(sample_weight).__name__}"
            )
        if sample_weight.shape != x.shape:
            raise ValueError(
                f"sample_weight must have x's shape {tuple(x.shape)}, "
                f"got {tuple(sample_weight.shape)}"
            )
        if sample_weight.is_complex():
            raise TypeError("sample_weight must be real, got a complex tensor")
        w = sample_weight.detach()
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise ValueError("sample_weight must be finite and >= 0: it contains NaN or Inf")
        if bool((w < 0).any()):
            raise ValueError("sample_weight must be >= 0: it has negative entries")
        if x.dim() == 1 and not bool((w != 0).any()):
            raise ValueError("sample_weight is zero everywhere: no point to cluster")


# --------------------------------------------------------------------------- #
# Sorted rows with prefix sums
# --------------------------------------------------------------------------- #


def _gather(a: np.ndarray, idx: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """``a[r[i], idx[i, ...]]`` for every i (r defaults to all rows in order)."""
    if r is None:
        if a.shape[0] == 1:
            return a[0][idx]
        if idx.ndim == 2:
            return np.take_along_axis(a, idx, axis=1)
        r = np.arange(a.shape[0])
    base = (r * a.shape[1]).reshape((-1,) + (1,) * (idx.ndim - 1))
    return a.ravel()[idx + base]


def _searchsorted_rows(
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


class _Rows:
    """A block of B sorted rows with float64 prefix sums.

    Row r holds ``nv[r]`` weighted values ``s[r, :nv[r]]`` (ascending) and is
    padded with +inf, so a searchsorted of finite values never passes nv.
    Prefix sums are taken of ``y = s - shift`` (shift = row median) to keep
    their magnitude, and so the cancellation in ``Q - S**2 / W``, small.
    Unit weights (the common case: no weights, or 0/1 masks) keep no weight
    array; the weight of a run is then its length.
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
            self.cw = _prefix(wv)
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
        return _gather(self.cw, pos, r)

    def xsum(self, pos: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        return _gather(self.cwx, pos, r)

    def qsum(self, pos: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        return _gather(self.cwx2, pos, r)

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
        if hint is None or A == 1:
            # One row: a single numpy searchsorted call is cheapest.
            pos[:, 1:k] = _searchsorted_rows(self.s, mids, True, r)
            return pos
        # Late Lloyd iterations move few cuts: check every old cut with two
        # look-ups (one cache miss, not log2(n)) and bisect only the moved ones.
        rr = np.arange(self.B) if r is None else r
        L = self.L
        p0 = hint[:, 1:k]
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
        pos[:, 1:k] = p
        return pos

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

    def subset(self, rows: np.ndarray) -> _Rows:
        """The rows ``rows`` (an index array) as a new block (self if all, in order)."""
        if len(rows) == self.B and (rows == np.arange(self.B)).all():
            return self
        sub = object.__new__(_Rows)
        sub.B, sub.L = len(rows), self.L
        for name in ("nv", "s", "lo", "hi", "shift", "total_w"):
            setattr(sub, name, getattr(self, name)[rows])
        sub._invalid = None if self._invalid is None else self._invalid[rows]
        sub.w = None if self.w is None else self.w[rows]
        sub.cw = None if self.cw is None else self.cw[rows]
        sub.cwx = self.cwx[rows]
        sub._cwx2 = None if self._cwx2 is None else self._cwx2[rows]
        return sub


def _prefix(a: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.float64)
    out[:, 0] = 0.0
    np.cumsum(a, axis=1, out=out[:, 1:])
    return out


def _segment_stats(
    rows: _Rows, pos: np.ndarray, r: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weight and centred weighted sum of every segment between cuts."""
    cw = rows.wsum(pos, r)
    cx = rows.xsum(pos, r)
    return np.diff(cw, axis=1), np.diff(cx, axis=1)


def _partition_sse(rows: _Rows, pos: np.ndarray) -> np.ndarray:
    """SSE (B,) of the partition given by cuts, each segment at its mean."""
    W = np.diff(rows.wsum(pos), axis=1)
    S = np.diff(rows.xsum(pos), axis=1)
    Q = np.diff(rows.qsum(pos), axis=1)
    return np.maximum(Q - S * S / np.maximum(W, _TINY), 0.0).sum(axis=1)


# --------------------------------------------------------------------------- #
# Initialisation
# --------------------------------------------------------------------------- #


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> np.ndarray:
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return u.cpu().numpy()


def _run_starts(rows: _Rows) -> np.ndarray:
    """Mask (B, L) of the first position of every distinct value."""
    s = rows.s
    start = np.empty(s.shape, dtype=bool)
    start[:, 0] = rows.nv > 0
    np.not_equal(s[:, 1:], s[:, :-1], out=start[:, 1:])
    start[:, 1:] &= np.arange(1, rows.L)[None, :] < rows.nv[:, None]
    return start


def _init_centroids(
    rows: _Rows, k: int, init: str, generator: torch.Generator | None
) -> np.ndarray:
    """Initial centroids (B, k) float64, ascending (duplicates possible)."""
    if init == "linear":
        if k == 1:
            return (0.5 * (rows.lo + rows.hi))[:, None]
        t = np.arange(k) / (k - 1)
        return rows.lo[:, None] + (rows.hi - rows.lo)[:, None] * t[None, :]
    if init == "density":
        # Evenly spaced levels of the weighted CDF, at the middle of each of
        # k equal-weight slices (Deep Compression's density-based init).
        target = ((np.arange(k) + 0.5) / k)[None, :] * rows.total_w[:, None]
        if rows.cw is None:
            idx = np.floor(target).astype(np.int64)
        else:
            idx = _searchsorted_rows(rows.cw, target, right=True) - 1
        idx = np.clip(idx, 0, np.maximum(rows.nv - 1, 0)[:, None])
        return _gather(rows.s, idx)
    if init == "random":
        return _init_random(rows, k, generator)
    return _init_kmeanspp(rows, k, generator)


def _init_random(rows: _Rows, k: int, generator: torch.Generator | None) -> np.ndarray:
    """Forgy: k distinct data values, drawn with probability ~ their weight.

    Weighted sampling without replacement by an exponential race: value v
    with total weight w_v gets key E_v / w_v (E_v ~ Exp(1)); the k smallest
    keys win.
    """
    start = _run_starts(rows)
    u = _rand((rows.B, rows.L), generator)
    pos = np.arange(rows.L + 1)[None, :]
    # End of each run: the next run start (or nv). Weight of a run = prefix
    # difference between its start and its end.
    nxt = np.where(start, pos[:, :-1], rows.L)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    end = np.empty_like(nxt)
    end[:, :-1] = nxt[:, 1:]
    end[:, -1] = rows.L
    end = np.minimum(end, rows.nv[:, None])
    idx = np.broadcast_to(pos[:, :-1], start.shape)
    wrun = rows.wsum(end) - rows.wsum(np.minimum(idx, end))
    with np.errstate(divide="ignore", invalid="ignore"):
        key = -np.log1p(-u) / wrun
    key[~start | ~(wrun > 0)] = np.inf
    pick = np.argpartition(key, k - 1, axis=1)[:, :k] if k < rows.L else np.argsort(key, 1)
    return np.sort(_gather(rows.s, pick[:, :k]), axis=1)


def _init_kmeanspp(rows: _Rows, k: int, generator: torch.Generator | None) -> np.ndarray:
    """k-means++ seeding, O(k (k + log n)) per row with prefix sums.

    The squared-distance mass of the Voronoi segment [a, b) of centroid c is
    Q - 2 c S + c^2 W over that segment, so the next seed's segment is drawn
    from k masses and the point inside it by bisection on that (monotone)
    cumulative mass.
    """
    B = rows.B
    draws = _rand((B, 2 * k), generator)
    rws = np.arange(B)
    # First seed ~ weight.
    target = draws[:, 0] * rows.total_w
    idx = _bisect(rows, np.zeros(B, np.int64), rows.nv.copy(), target, None)
    cents = np.full((B, k), np.inf)
    cents[:, 0] = rows.s[rws, idx]
    for t in range(1, k):
        cur = cents[:, :t]
        pos = rows.cuts(cur)
        a, b = pos[:, :-1], pos[:, 1:]
        cc = cur - rows.shift[:, None]
        mass = (
            np.diff(rows.qsum(pos), axis=1)
            - 2 * cc * np.diff(rows.xsum(pos), axis=1)
            + cc * cc * np.diff(rows.wsum(pos), axis=1)
        )
        mass = np.maximum(mass, 0.0)
        cm = np.cumsum(mass, axis=1)
        tot = cm[:, -1]
        target = draws[:, 2 * t - 1] * tot
        seg = (cm <= target[:, None]).sum(axis=1)
        seg = np.minimum(seg, t - 1)
        # A row whose remaining mass is zero has only duplicates left: any
        # pick works (Lloyd re-seeds duplicates).
        inner = draws[:, 2 * t] * mass[rws, seg]
        idx = _bisect(rows, a[rws, seg], b[rws, seg], inner, cc[rws, seg])
        cents[:, t] = rows.s[rws, idx]
        cents[:, : t + 1] = np.sort(cents[:, : t + 1], axis=1)
    return cents


def _bisect(
    rows: _Rows,
    a: np.ndarray,
    b: np.ndarray,
    target: np.ndarray,
    c: np.ndarray | None,
) -> np.ndarray:
    """Smallest index i in [a, b) whose cumulative mass over [a, i] exceeds target.

    The mass of a value is its weight (c None) or its weighted squared
    distance to the centred centroid c; b - 1 if no index qualifies.
    """

    def mass(i: np.ndarray) -> np.ndarray:
        p = np.stack([a, i], axis=1)
        W = np.diff(rows.wsum(p), axis=1)[:, 0]
        if c is None:
            return W
        S = np.diff(rows.xsum(p), axis=1)[:, 0]
        Q = np.diff(rows.qsum(p), axis=1)[:, 0]
        return Q - 2 * c * S + c * c * W

    lo, hi = a.copy(), np.maximum(b - 1, a)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        over = mass(mid + 1) > target
        hi = np.where(active & over, mid, hi)
        lo = np.where(active & ~over, mid + 1, lo)
    return lo


# --------------------------------------------------------------------------- #
# Lloyd
# --------------------------------------------------------------------------- #


def _lloyd(
    rows: _Rows, cents: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched sorted Lloyd with split re-seeding and merge-and-split moves.

    Each iteration works on the rows still active only; see :func:`_reseed`
    and :func:`_swap` for the two rules. Returns
    ``(centroids, cuts, ok)``: centroids (B, k) ascending, the cuts of the
    partition whose means they are, and whether that partition has k
    non-empty segments.
    """
    B, k = cents.shape
    cents = np.sort(cents, axis=1)
    if B == 1:
        return _lloyd_one(rows, cents, max_iter, tol)
    scale = np.maximum(rows.hi - rows.lo, _TINY)
    part = rows.cuts(cents)
    ok = np.zeros(B, dtype=bool)
    prev = part.copy()
    act = np.arange(B)
    hard_cap = max_iter + _EXTRA_ITERS_PER_CLUSTER * k
    it = 0
    while len(act) and it < hard_cap:
        it += 1
        r = None if len(act) == B else act
        c = cents[act]
        pos = rows.cuts(c, r, hint=None if it == 1 else prev[act])
        W, S = _segment_stats(rows, pos, r)
        empty = W <= 0
        any_empty = empty.any(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = rows.shift[act][:, None] + S / W
        new_pos = pos
        new_ok = ~any_empty
        if any_empty.any():
            e = np.flatnonzero(any_empty)
            new = new.copy()
            new_pos = pos.copy()
            new[e], new_pos[e], new_ok[e] = _reseed(rows, act[e], pos[e], W[e], S[e], new[e], c[e])
        done = ~any_empty & (np.abs(new - c).max(axis=1) <= tol * scale[act])
        if it > 1:
            # Same partition as last time: a fixed point (the means repeat).
            done |= ~any_empty & (pos == prev[act]).all(axis=1)
        if it < max_iter:
            sw = np.flatnonzero(~any_empty & (done | (it % _SWAP_EVERY == 0)))
            if sw.size:
                new = new.copy()
                new_pos = new_pos.copy()
                c2, p2, moved = _swap(rows, act[sw], pos[sw], W[sw], S[sw], new[sw])
                m = sw[moved]
                new[m], new_pos[m] = c2[moved], p2[moved]
                done[m] = False
        else:
            # Past max_iter only rows that still have empty clusters go on.
            done |= ~any_empty
        cents[act] = new
        part[act] = new_pos
        ok[act] = new_ok
        prev[act] = pos
        act = act[~done]
    logger.debug("lloyd: %d iterations, %d/%d rows not converged", it, len(act), B)
    return cents, part, ok


def _lloyd_one(
    rows: _Rows, cents: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_lloyd` for a single row, with the same steps and results.

    A 1-D input spends most of its time here; 1-D arrays and a short
    iteration keep Python overhead per iteration to a few microseconds.
    """
    k = cents.shape[1]
    s, cwx = rows.s[0], rows.cwx[0]
    cw = None if rows.cw is None else rows.cw[0]
    shift, nv = float(rows.shift[0]), int(rows.nv[0])
    lim = tol * max(float(rows.hi[0] - rows.lo[0]), _TINY)
    c = cents[0].copy()
    pos = np.empty(k + 1, dtype=np.int64)
    pos[0], pos[k] = 0, nv
    prev = None
    part, ok = pos.copy(), False
    hard_cap = max_iter + _EXTRA_ITERS_PER_CLUSTER * k
    it = 0
    done = False
    while not done and it < hard_cap:
        it += 1
        if k > 1:
            mids = 0.5 * (c[1:] + c[:-1])
            if it == 1:
                pos[1:k] = np.searchsorted(s, mids, side="right")
            else:
                # Search only the cuts that moved (two look-ups each to tell).
                p0 = pos[1:k]
                stay = (p0 == 0) | (s[np.maximum(p0 - 1, 0)] <= mids)
                stay &= (p0 == s.shape[0]) | (s[np.minimum(p0, s.shape[0] - 1)] > mids)
                if not stay.all():
                    mv = np.flatnonzero(~stay)
                    p0[mv] = np.searchsorted(s, mids[mv], side="right")
        W = np.diff(pos).astype(np.float64) if cw is None else np.diff(cw[pos])
        S = np.diff(cwx[pos])
        if (W <= 0).any():
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = shift + S / W
            new, new_part, new_ok = _reseed(
                rows, np.zeros(1, np.int64), pos[None], W[None], S[None], mean[None], c[None]
            )
            c, part, ok = new[0], new_part[0], bool(new_ok[0])
            done = False
        else:
            new = shift + S / W
            new_part = pos.copy()
            done = float(np.abs(new - c).max()) <= lim
            done |= prev is not None and bool((pos == prev).all())
            if it >= max_iter:
                done = True
            elif done or it % _SWAP_EVERY == 0:
                c2, p2, moved = _swap(
                    rows, np.zeros(1, np.int64), pos[None], W[None], S[None], new[None]
                )
                if moved[0]:
                    new, new_part, done = c2[0], p2[0], False
            c, part, ok = new, new_part, True
        prev = pos.copy()
    logger.debug("lloyd: %d iterations on one row (converged: %s)", it, done)
    return c[None], part[None], np.array([ok])


def _split_gains(
    rows: _Rows, r: np.ndarray, pos: np.ndarray, W: np.ndarray, S: np.ndarray, mean: np.ndarray
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
    rows: _Rows, r: np.ndarray, pos: np.ndarray, W: np.ndarray, S: np.ndarray, mean: np.ndarray
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
    rows: _Rows,
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


# --------------------------------------------------------------------------- #
# Globally optimal: dynamic programme over cut candidates
# --------------------------------------------------------------------------- #


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


def _optimal_cuts(rows: _Rows, grid: np.ndarray, k: int) -> np.ndarray:
    """Minimum-SSE partition into k segments with cuts restricted to ``grid``.

    ``grid`` (B, m) holds ascending cut positions per row, from 0 to nv
    (repeats allowed: they make empty segments, which cost 0). Costs are
    exact (prefix sums on the real data). D_c[j] = min_i D_{c-1}[i] +
    cost(i, j) is solved for every layer c by divide and conquer over j:
    squared error is a Monge cost, so the (leftmost) argmin is monotone in j
    and, across layers, never below the previous layer's. All rows and all
    columns of a level are evaluated at once. O(k m log m) per row.
    Returns the cuts (B, k+1) as data positions.
    """
    B, m = grid.shape
    Wg, Sg, Qg = rows.wsum(grid), rows.xsum(grid), rows.qsum(grid)
    D = Qg - Sg * Sg / np.maximum(Wg, _TINY)
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
        np.maximum(dW, _TINY, out=dW)
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
        v = Af[fi] - dS * dS / np.maximum(dW, _TINY)
        vm = np.minimum.reduceat(v, starts)
        cand = np.where(v == vm[owner], np.arange(total), total)
        bi[g] = fi[np.minimum.reduceat(cand, starts)]
        vmin[g] = vm
    return bi, vmin


def _grid(rows: _Rows, size: int) -> np.ndarray:
    """Cut candidates (B, size + 1) for the DP, ascending, from 0 to nv.

    A row with at most ``size`` distinct values gets every boundary between
    distinct values (so its DP is exact). A larger row gets half its cuts at
    equal-weight quantiles (resolution where the data are dense) and half at
    equally spaced values (resolution in the tails, where k-means places
    clusters more densely than the data), each moved to the start of its run
    of equal values so that no cut splits equal values.
    """
    B = rows.B
    start = _run_starts(rows)
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
            q = _searchsorted_rows(sub.cw, t, right=False)
        vals = sub.lo[:, None] + (sub.hi - sub.lo)[:, None] * (np.arange(1, nw) / nw)[None, :]
        wcut = _searchsorted_rows(sub.s, vals, right=False)
        cand = np.concatenate([q, wcut], axis=1)
        cand = np.clip(cand, 0, sub.nv[:, None])
        inside = cand < sub.nv[:, None]
        v = _gather(sub.s, np.minimum(cand, sub.nv[:, None] - 1))
        snapped = _searchsorted_rows(sub.s, v, right=False)
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


def _optimal(
    rows: _Rows, k: int, grid_size: int, init: str, generator, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DP on the grid, Lloyd refinement on the data, and never worse than Lloyd."""
    grid = _grid(rows, grid_size)
    cuts = _optimal_cuts(rows, grid, k)
    W, S = _segment_stats(rows, cuts)
    with np.errstate(divide="ignore", invalid="ignore"):
        c0 = rows.shift[:, None] + S / W
    # An empty DP segment (only possible on a coarse grid) gets a placeholder
    # at its cut; Lloyd's re-seeding fills it.
    c0 = np.where(W > 0, c0, _gather(rows.s, np.minimum(cuts[:, :-1], rows.nv[:, None] - 1)))
    c_dp, p_dp, ok_dp = _lloyd(rows, c0, max_iter, tol)
    c_ll, p_ll, ok_ll = _lloyd(rows, _init_centroids(rows, k, init, generator), max_iter, tol)
    e_dp = np.where(ok_dp, _partition_sse(rows, p_dp), np.inf)
    e_ll = np.where(ok_ll, _partition_sse(rows, p_ll), np.inf)
    take_ll = e_ll < e_dp
    if take_ll.any():
        logger.debug("optimal: Lloyd beat the grid DP on %d of %d rows", int(take_ll.sum()), rows.B)
    return (
        np.where(take_ll[:, None], c_ll, c_dp),
        np.where(take_ll[:, None], p_ll, p_dp),
        ok_dp | ok_ll,
    )


# --------------------------------------------------------------------------- #
# scikit-learn (comparison only)
# --------------------------------------------------------------------------- #


def _sklearn(
    rows: _Rows, cents: np.ndarray, max_iter: int, tol: float, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    B, k = cents.shape
    out = np.empty_like(cents)
    for r in range(B):  # sklearn has no batched mode; this path is for comparison only
        nv = int(rows.nv[r])
        X = rows.s[r, :nv].astype(dtype)[:, None]
        w = None if rows.w is None else rows.w[r, :nv]
        km = KMeans(
            n_clusters=k,
            init=cents[r].astype(dtype)[:, None],
            n_init=1,
            max_iter=max_iter,
            tol=tol,
            algorithm="lloyd",
        )
        km.fit(X, sample_weight=w)
        out[r] = np.sort(km.cluster_centers_[:, 0].astype(np.float64))
    part = rows.cuts(out)
    W, _ = _segment_stats(rows, part)
    return out, part, (W > 0).all(axis=1)


# --------------------------------------------------------------------------- #
# Finalisation: cast, guarantee non-empty clusters, labels
# --------------------------------------------------------------------------- #


def _cast(c: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Round float64 centroids to the output dtype (and back to float64)."""
    return torch.from_numpy(c).to(dtype).to(torch.float64).numpy()


def _finalize(
    rows: _Rows, cents: np.ndarray, part: np.ndarray, ok: np.ndarray, dtype: torch.dtype
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
    cc = _cast(np.clip(cents, rows.lo[:, None], rows.hi[:, None]), dtype)
    W, _ = _segment_stats(rows, rows.cuts(cc))
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
        # Last resort: k distinct values at evenly spaced ranks of the run starts.
        starts = _run_starts(sub)
        d = starts.sum(axis=1)
        rank = np.cumsum(starts, axis=1) - 1
        want = (np.arange(k)[None, :] * d[:, None]) // k
        rank_pos = np.where(starts, rank, -1)
        fb = np.empty((sub.B, k + 1), dtype=np.int64)
        for i in range(sub.B):  # only reached in degenerate cases
            idx = np.flatnonzero(rank_pos[i] >= 0)
            fb[i, :k] = idx[want[i]]
            fb[i, k] = sub.nv[i]
        pos = np.where(good_part[:, None], pos, fb)
    a, b = pos[:, :-1], pos[:, 1:] - 1
    c = cents[r]
    j = np.clip(_searchsorted_rows(sub.s, c, right=False), a, b)
    jm = np.clip(j - 1, a, b)
    vj, vm = _gather(sub.s, j), _gather(sub.s, jm)
    snap = np.where(np.abs(vm - c) <= np.abs(vj - c), vm, vj)
    snap = np.where(good_part[:, None], snap, _gather(sub.s, a))
    cc[r] = _cast(snap, dtype)
    return cc


def _round_down_f32(m: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 value: x32 <= m  iff  x32 <= result."""
    m32 = m.astype(np.float32)
    over = m32.astype(np.float64) > m
    if over.any():
        m32[over] = np.nextafter(m32[over], np.float32(-np.inf))
    return m32


def _labels(
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
        out[:] = _searchsorted_rows(mids, xn, right=False)
        return
    cells = int(min(_LUT_CELLS, max(1024, 16 * k, n // 16)))
    span = hi - lo
    inv = np.where(span > 0, cells / np.where(span > 0, span, 1.0), 0.0)
    step = 1.0 / np.where(inv > 0, inv, 1.0)
    centers = lo[:, None] + (np.arange(cells) + 0.5)[None, :] * step[:, None]
    roff = (np.arange(B) * k).astype(np.int32)[:, None]
    # Labels are kept as flat indices r*k + label, so every look-up below is
    # a single gather.
    table = _searchsorted_rows(mids, centers.astype(mids.dtype), right=False).astype(np.int32)
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
            lab[bad] = _searchsorted_rows(mids[bad], xn[bad], right=False) + roff[bad]
    lab -= roff
    out[:] = lab


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """CPU numpy view/copy: float32 for <= 32-bit floats, float64 for float64."""
    t = x.detach()
    t = t.to("cpu", torch.float64 if t.dtype == torch.float64 else torch.float32)
    return np.ascontiguousarray(t.numpy())


def _sort_rows(
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
    order = np.argsort(xm, axis=1, kind="stable")
    return np.take_along_axis(xm, order, 1), np.take_along_axis(wn, order, 1), nv


def _distinct_counts(s: np.ndarray, nv: np.ndarray) -> np.ndarray:
    if s.shape[1] == 0:
        return np.zeros(s.shape[0], dtype=np.int64)
    change = s[:, 1:] != s[:, :-1]
    change &= np.arange(1, s.shape[1])[None, :] < nv[:, None]
    return np.where(nv > 0, change.sum(axis=1) + 1, 0)


def _distinct_centroids(rows: _Rows, k: int) -> np.ndarray:
    """Each row's distinct values, padded with its largest value (rows with d <= k)."""
    start = _run_starts(rows)
    out = np.broadcast_to(rows.hi[:, None], (rows.B, k)).copy()
    rank = np.cumsum(start, axis=1) - 1
    rr, cc = np.nonzero(start)
    out[rr, rank[rr, cc]] = rows.s[rr, cc]
    return out


def kmeans1d(
    x: torch.Tensor,
    k: int,
    *,
    init: str = "linear",
    method: str = "lloyd",
    max_iter: int = 300,
    tol: float = 1e-7,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster scalars into at most ``k`` clusters (1-D k-means).

    A 1-D ``x`` of shape ``(n,)`` is one problem; a 2-D ``x`` of shape
    ``(B, n)`` is B independent problems (one per row, e.g. per-channel
    codebooks), solved together in vectorised form.

    Entries whose ``sample_weight`` is 0 are ignored entirely (not used for
    the init, the range or the means): this is how pruned weights are kept
    out of the codebook. They still get a label (their nearest centroid).
    Non-zero weights weight the means (weighted k-means).

    Number of clusters: ``k_eff = min(k, d)`` where d is the number of
    distinct values among the weighted entries (1-D), or the largest such
    count over the rows (2-D; at least 1). A problem with ``d <= k_eff``
    gets exactly its distinct values as centroids; in 2-D a row with
    ``d < k_eff`` has its d values first and the remaining slots filled with
    copies of its largest value (slots that own no point), and a row whose
    weights are all zero gets all-zero centroids and labels 0. Otherwise
    every returned centroid owns at least one weighted point: there are no
    empty clusters and no NaN.

    Methods:

    * ``"lloyd"``: Lloyd's algorithm on the sorted data, O(k log n) per
      iteration via prefix sums. It stops when the partition no longer
      changes (and no move below applies), when no centroid moves by more
      than ``tol`` times the data range, or after ``max_iter`` iterations.
      Empty clusters are re-seeded each iteration by *splitting*: a row
      with e empty clusters splits the e clusters whose split into two
      (2-means inside the cluster) lowers the SSE most, and drops the empty
      centroids (iterations past ``max_iter`` run only while a cluster is
      still empty, at most ``2 k`` more). Every 10 iterations and at
      convergence it also tries *merge-and-split* moves: merge t disjoint
      adjacent pairs of least merge cost and split the t clusters of
      largest split gain, for the largest t where each gain exceeds its
      cost (so the SSE strictly drops). Plain Lloyd from a linear init
      leaves many clusters starved in the tails at 8 bits (1.5-2.2x the
      optimal SSE); with these moves it ends within a few percent.
    * ``"optimal"``: globally optimal 1-D k-means by dynamic programming
      over cut positions of the sorted data (divide and conquer on the
      monotone argmin, O(k m log m) for m cut candidates), with costs
      computed exactly from prefix sums. Guarantee: a row with at most m
      distinct weighted values gets the exact minimum of the weighted SSE
      (up to float64 rounding; repeated values and weights are exact, not
      binned). A row with more values gets the exact optimum over
      partitions whose cuts lie on a grid of m candidates (half
      equal-weight quantiles, half equally spaced values), refined by
      Lloyd on the real data. In every case the result is at least as good
      as ``method="lloyd"`` with the same ``init`` (both run; the better
      is kept). ``m = clip(max(8 k, n // 64), 256, 4096)`` for rows of
      length n, so it does not depend on the batch. Measured against an
      exact O(k n) solver (normal and Laplace data, ``benchmarks/kmeans.py``)
      the SSE was at most 0.3 % above the optimum (worst: 1e5 values, 8
      bits; 0.03 % at 1e6 values, 8 bits; 0.14 % on rows of 9216 values
      with k = 32), and exact at 2 to 5 bits to 1e-5.
    * ``"sklearn"``: ``sklearn.cluster.KMeans(n_clusters=k_eff, init=<our
      init>, n_init=1, max_iter=max_iter, tol=tol)`` per row (a Python
      loop; for comparison). ``tol`` has scikit-learn's meaning there.

    Args:
        x: floating tensor, ``(n,)`` or ``(B, n)``, finite everywhere (NaN or
            Inf is rejected even at zero-weight entries). Any device.
        k: number of clusters, an int >= 1.
        init: ``"linear"`` (evenly spaced between min and max, Deep
            Compression's default), ``"density"`` (evenly spaced levels of
            the weighted CDF), ``"random"`` (Forgy: k distinct data values
            drawn with probability proportional to their weight) or
            ``"kmeans++"``. Random inits draw from ``generator``; results are
            deterministic for a given generator state, and always
            deterministic for the other inits.
        method: ``"lloyd"``, ``"optimal"`` or ``"sklearn"`` (see above).
        max_iter: maximum number of Lloyd iterations, an int >= 1.
        tol: Lloyd stops once no centroid moves by more than ``tol`` times
            the row's range (max - min of the weighted values); >= 0.
        sample_weight: optional non-negative finite weights, shape of ``x``.
        generator: ``torch.Generator`` for the random inits.

    Returns:
        ``(centroids, labels)``: centroids of x's dtype and device, sorted
        ascending along the last dim, shape ``(k_eff,)`` or ``(B, k_eff)``;
        labels int64 of x's shape, the index of the nearest centroid (ties
        go to the lower index).

    Raises:
        TypeError: x not a floating tensor; k or max_iter not an int.
        ValueError: bad shape, empty x, NaN/Inf, k < 1, max_iter < 1,
            tol < 0, unknown init or method, sample_weight of the wrong
            shape, negative or non-finite, or all zero for 1-D x.

    Example:
        >>> x = torch.tensor([0.0, 0.1, 0.9, 1.0, 5.0])
        >>> c, labels = kmeans1d(x, 2, method="optimal")
        >>> c
        tensor([0.5000, 5.0000])
        >>> labels
        tensor([0, 0, 0, 0, 1])
    """
    _validate(x, k, init, method, max_iter, tol, sample_weight, generator)
    device, dtype = x.device, x.dtype
    one_d = x.dim() == 1
    xn = _to_numpy(x.reshape(1, -1) if one_d else x)
    wn = None
    unit = True
    if sample_weight is not None:
        wt = sample_weight.detach().to("cpu", torch.float64)
        wn = np.ascontiguousarray(wt.reshape(xn.shape).numpy())
        if not np.isfinite(xn).all():
            raise ValueError("x must be finite: it contains NaN or Inf")
        pos = wn[wn > 0]
        unit = pos.size == 0 or bool(pos.min() == pos.max())
    B, n = xn.shape

    # Pass 1: sort every block of rows and count distinct values, to find k_eff.
    step = B if one_d else max(1, _BLOCK_ELEMS // n)
    blocks = []
    for i in range(0, B, step):
        s, ws, nv = _sort_rows(xn[i : i + step], None if wn is None else wn[i : i + step], unit)
        if wn is None and not (np.isfinite(s[:, 0]).all() and np.isfinite(s[:, -1]).all()):
            # Sorted, -inf comes first and +inf and NaN last: checking the
            # ends is a check of every entry.
            raise ValueError("x must be finite: it contains NaN or Inf")
        blocks.append((s, ws, nv, _distinct_counts(s, nv)))
    dmax = max(int(b[3].max()) for b in blocks)
    k_eff = max(1, min(k, dmax))

    cents_out = np.zeros((B, k_eff), dtype=np.float64)
    labels = np.empty((B, n), dtype=np.int64)
    grid_size = int(
        np.clip(max(_GRID_PER_CLUSTER * k_eff, n // _GRID_VALUES_PER_CUT), _GRID_MIN, _GRID_MAX)
    )
    for bi, (s, ws, nv, d) in enumerate(blocks):
        i0 = bi * step
        rows = _Rows(s, ws, nv)
        cents = np.zeros((rows.B, k_eff))
        direct = (d <= k_eff) & (nv > 0)
        if direct.any():
            r = np.flatnonzero(direct)
            cents[r] = _distinct_centroids(rows.subset(r), k_eff)
        todo = np.flatnonzero(d > k_eff)
        if len(todo):
            sub = rows.subset(todo)
            if method == "optimal":
                c, part, ok = _optimal(sub, k_eff, grid_size, init, generator, max_iter, tol)
            else:
                c0 = _init_centroids(sub, k_eff, init, generator)
                if method == "lloyd":
                    c, part, ok = _lloyd(sub, c0, max_iter, tol)
                else:
                    npdt = np.float64 if dtype == torch.float64 else np.float32
                    c, part, ok = _sklearn(sub, c0, max_iter, tol, npdt)
            cents[todo] = _finalize(sub, c, part, ok, dtype)
        if direct.any():
            cents[direct] = _cast(cents[direct], dtype)
        sl = slice(i0, i0 + rows.B)
        _labels(xn[sl], cents, rows.lo, rows.hi, labels[sl])
        padded = np.flatnonzero((d < k_eff) & (nv > 0))
        if padded.size:
            # Entries above a padded row's largest value tie between its
            # copies of that value: the first copy (lower index) wins.
            lab = labels[sl]
            lab[padded] = np.minimum(lab[padded], (d[padded] - 1)[:, None])
        labels[sl][nv == 0] = 0
        cents_out[sl] = cents

    c_t = torch.from_numpy(cents_out).to(dtype)
    l_t = torch.from_numpy(labels)
    if one_d:
        c_t, l_t = c_t[0], l_t[0]
    return c_t.to(device), l_t.to(device)


def sse(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
) -> float:
    """Weighted sum of squared errors of a clustering, accumulated in float64.

    Args:
        x: data, ``(n,)`` or ``(B, n)``.
        centroids: ``(k,)`` or ``(B, k)`` (one codebook per row).
        labels: int64 indices into the centroids, shape of ``x``.
        sample_weight: optional weights, shape of ``x`` (default: all 1).

    Returns:
        ``sum(w * (x - centroids[labels]) ** 2)`` as a Python float.

    Example:
        >>> sse(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.5, 3.0]), torch.tensor([0, 0, 1]))
        0.5
    """
    if x.dim() not in (1, 2) or labels.shape != x.shape:
        raise ValueError(
            f"x must be 1-D or 2-D and labels of its shape, got {tuple(x.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if centroids.dim() != x.dim() or (x.dim() == 2 and centroids.shape[0] != x.shape[0]):
        raise ValueError(
            f"centroids must be (k,) for 1-D x or (B, k) for 2-D x, got {tuple(centroids.shape)}"
        )
    xd = x.detach().to("cpu", torch.float64)
    cd = centroids.detach().to("cpu", torch.float64)
    ld = labels.detach().to("cpu", torch.int64)
    err = xd - torch.gather(cd, -1, ld) if x.dim() == 2 else xd - cd[ld]
    err = err * err
    if sample_weight is not None:
        err = err * sample_weight.detach().to("cpu", torch.float64)
    return float(err.sum())
