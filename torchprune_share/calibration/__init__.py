"""Calibrated post-training compression: each layer's output error on real inputs as the objective.

The entry points are :meth:`torchprune_share.Quantizer.quantize` and
:meth:`torchprune_share.LevelPruner.prune` with ``calibration=``; this package is what
they run. Layers, from the bottom:

* :mod:`.hessian`, :mod:`.sweep`, :mod:`.refit`, :mod:`.matrix`: the numeric core
  (tensors in, tensors out): the input Hessian and its inverse factor, the GPTQ-class
  codebook sweep and SparseGPT-class pruning sweep, least-squares refits of codebooks
  and survivors, and the three algorithms (``"hessian"``, ``"diagonal"``, ``"fisher"``)
  on one 2-D weight.
* :mod:`.layers`: what a ``Linear``/``Conv``/``Embedding`` looks like as a matrix and
  its inputs as rows.
* :mod:`.augment`: synthetic token sequences drawn from the calibration tokens, beside
  the real batches (``augment=``), so that a few dozen sentences generalise better.
* :mod:`.staging`, :mod:`.engine`: the calibration pass over a model (hooks, layer
  groups in execution order, sequential rounds with staged values, Fisher by autograd),
  leaving the model as it was.
* :mod:`.apply`: plans for many tensors, then one commit into the ordinary
  parametrizations.

Example:
    >>> from torchprune_share import Quantizer
    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> batches = [torch.randn(32, 8) for _ in range(2)]
    >>> _ = Quantizer({"*": 2}).quantize(net, batches, progress=False)
    >>> int(net[0].parametrizations.weight.original.numel()) <= 4
    True
"""

from .apply import PruneRequest, ShareRequest, prune_calibrated, share_calibrated
from .engine import calibrate, default_forward
from .matrix import Statistics, prune_matrix, share_matrix

__all__ = [
    "PruneRequest",
    "ShareRequest",
    "Statistics",
    "calibrate",
    "default_forward",
    "prune_calibrated",
    "prune_matrix",
    "share_calibrated",
    "share_matrix",
]
