"""The demo's offline data sets under their 0.1.0 name; they live in :mod:`torchprune_share.demo.data`.

Kept so that code written for 0.1.0 (``from torchprune_share.data import load_digits``)
keeps working. New code imports :mod:`torchprune_share.demo.data`. The library itself
never imports this module.

Example:
    >>> from torchprune_share import data
    >>> from torchprune_share.demo import data as demo_data
    >>> data.load_digits is demo_data.load_digits
    True
"""

from .demo.data import MNIST_FILES, BatchLoader, Splits, load_digits, load_mnist, make_loaders

__all__ = ["MNIST_FILES", "BatchLoader", "Splits", "load_digits", "load_mnist", "make_loaders"]
