"""scikit-learn's ``KMeans`` on the same rows and init (``method="sklearn"``).

For comparison only: scikit-learn has no batched mode, so rows run one by
one in a Python loop. Imported lazily: scikit-learn is needed only when this
method is asked for.
"""

from __future__ import annotations

import numpy as np

from .rows import SortedRows, segment_stats

__all__ = ["sklearn_kmeans"]


def sklearn_kmeans(
    rows: SortedRows, cents: np.ndarray, max_iter: int, tol: float, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's Lloyd on every row from the centroids ``cents`` (B, k).

    ``KMeans(n_clusters=k, init=cents[r], n_init=1, max_iter=max_iter,
    tol=tol)`` on row r's weighted values in ``dtype`` (scikit-learn's
    meaning of ``tol``). Returns ``(centroids, cuts, ok)`` as
    :func:`~torchprune_share.kmeans.lloyd.lloyd` does.

    Example:
        >>> from torchprune_share.kmeans.rows import SortedRows
        >>> rows = SortedRows(np.array([[0.0, 1.0, 9.0, 10.0]]), None, np.array([4]))
        >>> sklearn_kmeans(rows, np.array([[0.0, 10.0]]), 300, 1e-4, np.float64)[0]
        array([[0.5, 9.5]])
    """
    from sklearn.cluster import KMeans

    B, k = cents.shape
    out = np.empty_like(cents)
    for r in range(B):
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
    W, _ = segment_stats(rows, part)
    return out, part, (W > 0).all(axis=1)
