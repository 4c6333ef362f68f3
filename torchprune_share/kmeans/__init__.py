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

Modules (tensors come in and go out only in ``api``; the rest is numpy):

* ``validation``: argument checks (TypeError / ValueError), INITS, METHODS;
* ``rows``: :class:`~torchprune_share.kmeans.rows.SortedRows`, sorted rows
  with prefix sums, the data structure everything else works on;
* ``inits``: linear, density, random, k-means++;
* ``lloyd``: Lloyd with re-seeding and merge-and-split moves (1-D input is
  the block of one row: one implementation);
* ``optimal``: the dynamic programme;
* ``sklearn_bridge``: scikit-learn on the same rows and init;
* ``finalize``: output dtype, no empty cluster, exact nearest-centroid labels;
* ``api``: :func:`kmeans1d` and :func:`sse`.

All heavy lifting runs on the CPU in numpy (``np.sort`` is about 3x faster
than ``torch.sort`` here); results are returned on the input's device.

Example:
    >>> from torchprune_share.kmeans import kmeans1d, sse
    >>> x = torch.tensor([0.0, 0.2, 1.0, 1.2])
    >>> c, labels = kmeans1d(x, 2)
    >>> c, labels
    (tensor([0.1000, 1.1000]), tensor([0, 0, 1, 1]))
    >>> round(sse(x, c, labels), 6)
    0.02
"""

from __future__ import annotations

from .api import kmeans1d, sse
from .validation import INITS, METHODS

__all__ = ["INITS", "METHODS", "kmeans1d", "sse"]

# doctest.testmod(torchprune_share.kmeans) also runs the examples of the
# functions defined in the sub-modules.
__test__ = {"kmeans1d": kmeans1d, "sse": sse}
