"""The public functions: :func:`kmeans1d`, :func:`kmeans1d_centroids` and :func:`sse`.

:func:`kmeans1d` checks its arguments once, sorts the rows in blocks of
bounded size, runs the chosen method on the rows that have more distinct
values than clusters, and labels every entry (:func:`kmeans1d_centroids`
stops before the labels). The numeric modules of the
package do the work on numpy arrays; tensors come in and go out here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .finalize import cast_to, distinct_centroids, finalize, nearest_labels
from .inits import init_centroids
from .lloyd import lloyd
from .optimal import optimal
from .rows import SortedRows, distinct_counts, sort_rows
from .sklearn_bridge import sklearn_kmeans
from .validation import check_kmeans_args, check_sse_args

__all__ = ["kmeans1d", "kmeans1d_centroids", "sse"]

# 2-D inputs are processed in blocks of rows of about this many elements, to
# bound the float64 working set (several arrays of the block's size).
_BLOCK_ELEMS = 1 << 22


class _Options(NamedTuple):
    init: str
    method: str
    max_iter: int
    tol: float
    generator: torch.Generator | None
    dtype: torch.dtype


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
    """Cluster scalars into at most ``k`` clusters (1-D k-means), optionally weighted.

    A 1-D ``x`` of shape ``(n,)`` is one problem; a 2-D ``x`` of shape
    ``(B, n)`` is B independent problems (e.g. per-channel codebooks) solved
    together, each row giving what it gives clustered alone. Weighted
    k-means minimises ``sum(w * (x - c[label]) ** 2)``; entries of weight 0
    take no part (not in the init, the range or the means: this keeps
    pruned weights out of the codebook) but are labelled too.

    ``k_eff = min(k, d)`` clusters, d the number of distinct weighted values
    (2-D: the largest count over the rows, at least 1). A problem with
    ``d <= k_eff`` gets exactly its distinct values; in 2-D a row with
    ``d < k_eff`` has its d values first and the other slots filled with
    its largest value (owning no point), and a row of zero weights gets
    zero centroids and labels. Otherwise every centroid owns a weighted
    point: no empty cluster, no NaN.

    Args:
        x: floating tensor, ``(n,)`` or ``(B, n)``, finite everywhere (also
            at zero-weight entries). Any device.
        k: number of clusters, an int >= 1.
        init: ``"linear"`` (evenly spaced between min and max, Deep
            Compression's default), ``"density"`` (evenly spaced levels of
            the weighted CDF), ``"random"`` (k distinct values drawn with
            probability proportional to their weight), ``"kmeans++"`` (the
            last two draw from ``generator``) or ``"dp"`` (the optimal
            partition over a coarse grid of at least 128 cuts: near
            ``method="optimal"``'s result at Lloyd's cost).
        method: ``"lloyd"`` (Lloyd on the sorted data with split re-seeding
            and merge-and-split moves), ``"optimal"`` (dynamic programme
            with exact costs; never worse than ``"lloyd"``) or ``"sklearn"``
            (scikit-learn's ``KMeans`` from the same init, for comparison).
            See the :mod:`torchprune_share.kmeans` docstring.
        max_iter: most Lloyd iterations, an int >= 1.
        tol: Lloyd stops once no centroid moves by more than ``tol`` times
            the row's range (of the weighted values); a real number >= 0.
            scikit-learn's meaning for ``"sklearn"``.
        sample_weight: optional non-negative finite weights of x's shape
            (e.g. Hessian-diagonal or Fisher importances); not all zero for
            1-D x.
        generator: ``torch.Generator`` for the random inits.

    Returns:
        ``(centroids, labels)``: centroids of x's dtype and device, ascending
        along the last dim, ``(k_eff,)`` or ``(B, k_eff)``; labels int64 of
        x's shape, the index of the nearest centroid (ties to the lower).

    Raises:
        TypeError: x not a floating tensor, k or max_iter not an int, tol
            not a real number, init or method not a str, sample_weight not a
            real tensor, generator not a ``torch.Generator``.
        ValueError: x not 1-D or 2-D, empty or not finite; k < 1, max_iter
            < 1, tol < 0; unknown init or method; sample_weight of another
            shape, negative or not finite, or all zero for 1-D x.

    Example:
        >>> x = torch.tensor([0.0, 0.1, 0.9, 1.0, 5.0])
        >>> kmeans1d(x, 2, method="optimal")
        (tensor([0.5000, 5.0000]), tensor([0, 0, 0, 0, 1]))
        >>> kmeans1d(x, 2, sample_weight=torch.tensor([1.0, 3.0, 0.0, 0.0, 1.0]))[0]
        tensor([0.0750, 5.0000])
    """
    cents, labels = _run(x, k, init, method, max_iter, tol, sample_weight, generator, True)
    assert labels is not None
    return cents, labels


def kmeans1d_centroids(
    x: torch.Tensor,
    k: int,
    *,
    init: str = "linear",
    method: str = "lloyd",
    max_iter: int = 300,
    tol: float = 1e-7,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The centroids of :func:`kmeans1d`, bitwise, without labelling the entries.

    For callers that assign the entries themselves (the calibrated column sweep reassigns
    every code with error feedback): the labels are a nearest-centroid search over all of
    ``x``, 0.6 of 3.8 s of the calibrated k-means of a 6-layer BERT.

    Args:
        x, k, init, method, max_iter, tol, sample_weight, generator: as
            :func:`kmeans1d`, with the same checks and errors.

    Returns:
        The centroids, as :func:`kmeans1d` returns them.

    Example:
        >>> x = torch.tensor([0.0, 0.1, 0.9, 1.0, 5.0])
        >>> kmeans1d_centroids(x, 2, method="optimal")
        tensor([0.5000, 5.0000])
    """
    return _run(x, k, init, method, max_iter, tol, sample_weight, generator, False)[0]


def _run(
    x: torch.Tensor,
    k: int,
    init: str,
    method: str,
    max_iter: int,
    tol: float,
    sample_weight: torch.Tensor | None,
    generator: torch.Generator | None,
    label: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    check_kmeans_args(x, k, init, method, max_iter, tol, sample_weight, generator)
    opts = _Options(init, method, int(max_iter), float(tol), generator, x.dtype)
    one_d = x.dim() == 1
    xn = _to_numpy(x.reshape(1, -1) if one_d else x)
    cents, labels = _cluster(xn, _weights(sample_weight, xn), int(k), opts, one_d, label)

    def back(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a[0] if one_d else a)

    c_t = back(cents).to(x.dtype).to(x.device)
    return c_t, None if labels is None else back(labels).to(x.device)


def _cluster(
    xn: np.ndarray,
    weights: tuple[np.ndarray | None, bool],
    k: int,
    opts: _Options,
    one_d: bool,
    label: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Centroids (B, k_eff) float64 and labels (B, n) of the rows of ``xn`` (``None``
    without ``label``).

    Pass 1 sorts every block of rows and counts distinct values, to find
    k_eff; pass 2 clusters and labels block by block.
    """
    wn, unit = weights
    B, n = xn.shape
    step = B if one_d else max(1, _BLOCK_ELEMS // n)
    starts = range(0, B, step)
    blocks = [
        _sort_block(xn[i : i + step], None if wn is None else wn[i : i + step], unit)
        for i in starts
    ]
    k_eff = max(1, min(k, max(int(b[3].max()) for b in blocks)))
    cents = np.zeros((B, k_eff), dtype=np.float64)
    labels = np.empty((B, n), dtype=np.int64) if label else None
    for i, block in zip(starts, blocks, strict=True):
        sl = slice(i, i + step)
        cents[sl] = _cluster_block(
            xn[sl], block, k_eff, opts, None if labels is None else labels[sl]
        )
    return cents, labels


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """CPU numpy copy: float32 for <= 32-bit floats, float64 for float64."""
    t = x.detach()
    t = t.to("cpu", torch.float64 if t.dtype == torch.float64 else torch.float32)
    return np.ascontiguousarray(t.numpy())


def _weights(sample_weight: torch.Tensor | None, xn: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """Float64 weights shaped like ``xn``, and whether the non-zero ones are all equal."""
    if sample_weight is None:
        return None, True
    wt = sample_weight.detach().to("cpu", torch.float64)
    wn = np.ascontiguousarray(wt.reshape(xn.shape).numpy())
    if not np.isfinite(xn).all():
        raise ValueError("x must be finite: it contains NaN or Inf")
    pos = wn[wn > 0]
    return wn, pos.size == 0 or bool(pos.min() == pos.max())


def _sort_block(
    xn: np.ndarray, wn: np.ndarray | None, unit: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Sorted values, their weights, weighted and distinct counts of a block of rows."""
    s, ws, nv = sort_rows(xn, wn, unit)
    if wn is None and not (np.isfinite(s[:, 0]).all() and np.isfinite(s[:, -1]).all()):
        # Sorted, -inf comes first and +inf and NaN last: checking the ends
        # is a check of every entry.
        raise ValueError("x must be finite: it contains NaN or Inf")
    return s, ws, nv, distinct_counts(s, nv)


def _cluster_block(
    xn: np.ndarray,
    block: tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray],
    k: int,
    opts: _Options,
    labels: np.ndarray | None,
) -> np.ndarray:
    """Centroids (b, k) of a block of rows (as float64 in the output dtype); fills
    ``labels`` when given."""
    s, ws, nv, d = block
    rows = SortedRows(s, ws, nv)
    cents = np.zeros((rows.B, k))
    direct = (d <= k) & (nv > 0)
    if direct.any():
        cents[direct] = cast_to(
            distinct_centroids(rows.subset(np.flatnonzero(direct)), k), opts.dtype
        )
    todo = np.flatnonzero(d > k)
    if len(todo):
        cents[todo] = _cluster_rows(rows.subset(todo), k, opts)
    if labels is None:
        return cents
    nearest_labels(xn, cents, rows.lo, rows.hi, labels)
    padded = np.flatnonzero((d < k) & (nv > 0))
    if padded.size:
        # Entries above a padded row's largest value tie between its copies
        # of that value: the first copy (lower index) wins.
        labels[padded] = np.minimum(labels[padded], (d[padded] - 1)[:, None])
    labels[nv == 0] = 0
    return cents


def _cluster_rows(rows: SortedRows, k: int, opts: _Options) -> np.ndarray:
    """Centroids (B, k) of rows with more than k distinct values, by ``opts.method``."""
    if opts.method == "optimal":
        c, part, ok = optimal(rows, k, opts.init, opts.generator, opts.max_iter, opts.tol)
    else:
        c0 = init_centroids(rows, k, opts.init, opts.generator)
        if opts.method == "lloyd":
            c, part, ok = lloyd(rows, c0, opts.max_iter, opts.tol)
        else:
            npdt = np.float64 if opts.dtype == torch.float64 else np.float32
            c, part, ok = sklearn_kmeans(rows, c0, opts.max_iter, opts.tol, npdt)
    return finalize(rows, c, part, ok, opts.dtype)


def sse(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
) -> float:
    """Weighted sum of squared errors of a clustering, accumulated in float64.

    scikit-learn's ``inertia_`` is accumulated in float32 and reads low on
    large inputs; this is exact to float64 rounding.

    Args:
        x: data, ``(n,)`` or ``(B, n)``.
        centroids: ``(k,)`` or ``(B, k)`` (one codebook per row).
        labels: integer indices into the centroids, in [0, k), x's shape.
        sample_weight: optional non-negative weights of x's shape (default:
            all 1).

    Returns:
        ``sum(w * (x - centroids[labels]) ** 2)`` as a Python float.

    Raises:
        TypeError: an argument is not a tensor, or labels not integer.
        ValueError: shapes that do not match, labels out of range, or
            negative or non-finite weights.

    Example:
        >>> sse(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.5, 3.0]), torch.tensor([0, 0, 1]))
        0.5
    """
    check_sse_args(x, centroids, labels, sample_weight)
    xd = x.detach().to("cpu", torch.float64)
    cd = centroids.detach().to("cpu", torch.float64)
    ld = labels.detach().to("cpu", torch.int64)
    err = xd - torch.gather(cd, -1, ld) if x.dim() == 2 else xd - cd[ld]
    err = err * err
    if sample_weight is not None:
        err = err * sample_weight.detach().to("cpu", torch.float64)
    return float(err.sum())
