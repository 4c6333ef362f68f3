"""One-dimensional k-means: the numeric core of weight sharing.

Deep Compression shares weights by clustering the (surviving) weights of a
layer into ``k = 2**bits`` clusters and storing, per weight, the index of
its cluster. The data are scalars, so everything here exploits 1-D
structure: after one sort every cluster is a contiguous run of the sorted
values, and prefix sums of the weights ``w`` and of ``w * x`` give the
statistics of any run in O(1). One Lloyd iteration then costs O(k log n),
and an exact dynamic programme over cut positions is possible.

Public API:

* :func:`kmeans1d` clusters a 1-D tensor, or every row of a 2-D tensor
  independently (per-channel codebooks), with Lloyd's algorithm
  (``method="lloyd"``), a globally optimal dynamic programme
  (``method="optimal"``) or scikit-learn's ``KMeans`` (``method="sklearn"``,
  for comparison), optionally weighted (``sample_weight``).
* :func:`sse` is the weighted sum of squared errors in float64.
* :data:`INITS` and :data:`METHODS` list the accepted ``init`` and
  ``method`` names.

Methods:

* ``"lloyd"``: Lloyd's algorithm on the sorted data, O(k log n) per
  iteration via prefix sums. It stops when the partition no longer changes
  (and no move below applies), when no centroid moves by more than ``tol``
  times the data range, or after ``max_iter`` iterations. Empty clusters
  are re-seeded each iteration by *splitting*: a row with e empty clusters
  splits the e clusters whose split into two lowers the SSE most
  (iterations past ``max_iter`` run only while a cluster is still empty, at
  most ``2 k`` more). Every 10 iterations and at convergence it also tries
  *merge-and-split* moves: merge t disjoint adjacent pairs of least merge
  cost and split the t clusters of largest split gain, for the largest t
  where each gain exceeds its cost (so the SSE strictly drops). Plain Lloyd
  from a linear init leaves many clusters starved in the tails at 8 bits
  (1.5-2.2x the optimal SSE); with these moves it ends within a few percent.
  Every step lowers the weighted SSE or leaves it unchanged.
* ``"optimal"``: globally optimal 1-D k-means by dynamic programming over
  cut positions of the sorted data (divide and conquer on the monotone
  argmin, O(k m log m) for m cut candidates), costs computed exactly from
  prefix sums. A row with at most m distinct weighted values gets the exact
  minimum of the weighted SSE (up to float64 rounding). A row with more
  gets the exact optimum over partitions whose cuts lie on a grid of m
  candidates (half equal-weight quantiles, half equally spaced values),
  refined by Lloyd on the real data. ``m = clip(max(8 k, n // 64), 256,
  4096)`` for rows of length n, independent of the batch. The result is at
  least as good as ``"lloyd"`` with the same ``init`` (both run; the better
  is kept). Against an exact O(k n) solver (``benchmarks/kmeans.py``) the
  SSE was at most 0.3 % above the optimum (worst: 1e5 values, 8 bits;
  0.03 % at 1e6 values, 8 bits; 0.14 % on rows of 9216 values, k = 32), and
  exact at 2 to 5 bits to 1e-5.
* ``"sklearn"``: ``sklearn.cluster.KMeans(n_clusters=k_eff, init=<our
  init>, n_init=1, max_iter=max_iter, tol=tol)`` per row (a Python loop;
  for comparison).

Modules (tensors come in and go out only in ``api``; the rest is numpy):

* ``validation``: argument checks (TypeError / ValueError), INITS, METHODS;
* ``rows``: :class:`~torchprune_share.kmeans.rows.SortedRows`, sorted rows
  with prefix sums, the data structure everything else works on;
* ``inits``: linear, density, random, k-means++, and the coarse dynamic
  programme of ``optimal`` as a seed (``"dp"``);
* ``lloyd``: Lloyd with re-seeding and merge-and-split moves (1-D input is
  the block of one row: one implementation);
* ``optimal``: the dynamic programme (and its coarse seed);
* ``sklearn_bridge``: scikit-learn on the same rows and init;
* ``finalize``: output dtype, no empty cluster, exact nearest-centroid labels;
* ``api``: :func:`kmeans1d`, :func:`kmeans1d_centroids` (no labels) and :func:`sse`.

All heavy lifting runs on the CPU in numpy (``np.sort`` is about 3x faster
than ``torch.sort`` here); results are returned on the input's device.

Example:
    >>> from torchprune_share.kmeans import kmeans1d, sse
    >>> x = torch.tensor([0.0, 0.2, 1.0, 1.2])
    >>> c, labels = kmeans1d(x, 2)
    >>> c, labels
    (tensor([0.1000, 1.1000]), tensor([0, 0, 1, 1]))
    >>> round(sse(x, c, labels), 6)
    0.04
"""

from __future__ import annotations

from .api import kmeans1d, kmeans1d_centroids, sse
from .validation import INITS, METHODS

__all__ = ["INITS", "METHODS", "kmeans1d", "kmeans1d_centroids", "sse"]

# doctest.testmod(torchprune_share.kmeans) also runs the examples of the
# functions defined in the sub-modules.
__test__ = {"kmeans1d": kmeans1d, "kmeans1d_centroids": kmeans1d_centroids, "sse": sse}
