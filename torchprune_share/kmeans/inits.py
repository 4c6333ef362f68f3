"""Initial centroids for 1-D k-means: linear, density, random (Forgy), k-means++, dp.

Every init works on a :class:`~torchprune_share.kmeans.rows.SortedRows`
block (all rows at once) and respects the weights: zero-weight entries
neither set the range nor can be drawn. The random inits draw from a
``torch.Generator``, so a result is reproducible from the generator state.
"""

from __future__ import annotations

import numpy as np
import torch

from .rows import SortedRows, gather, run_starts, searchsorted_rows

__all__ = ["init_centroids"]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> np.ndarray:
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return u.cpu().numpy()


def init_centroids(
    rows: SortedRows, k: int, init: str, generator: torch.Generator | None
) -> np.ndarray:
    """Initial centroids (B, k) float64, ascending (duplicates possible).

    Args:
        rows: the sorted rows.
        k: number of centroids.
        init: one of :data:`~torchprune_share.kmeans.INITS`.
        generator: draws of ``"random"`` and ``"kmeans++"``.

    Example:
        >>> rows = SortedRows(np.array([[0.0, 1.0, 2.0, 10.0]]), None, np.array([4]))
        >>> init_centroids(rows, 3, "linear", None), init_centroids(rows, 2, "density", None)
        (array([[ 0.,  5., 10.]]), array([[ 1., 10.]]))
    """
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
            idx = searchsorted_rows(rows.cw, target, right=True) - 1
        idx = np.clip(idx, 0, np.maximum(rows.nv - 1, 0)[:, None])
        return gather(rows.s, idx)
    if init == "random":
        return _init_random(rows, k, generator)
    if init == "dp":
        # Imported here: the dynamic programme's module imports this one.
        from .optimal import dp_seed

        return dp_seed(rows, k)
    return _init_kmeanspp(rows, k, generator)


def _init_random(rows: SortedRows, k: int, generator: torch.Generator | None) -> np.ndarray:
    """Forgy: k distinct data values, drawn with probability ~ their weight.

    Weighted sampling without replacement by an exponential race: value v
    with total weight w_v gets key E_v / w_v (E_v ~ Exp(1)); the k smallest
    keys win.
    """
    start = run_starts(rows)
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
    return np.sort(gather(rows.s, pick[:, :k]), axis=1)


def _init_kmeanspp(rows: SortedRows, k: int, generator: torch.Generator | None) -> np.ndarray:
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
    rows: SortedRows,
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
