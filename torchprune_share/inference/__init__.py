"""Compressed inference: run pruned and shared layers straight from codes and indices.

:func:`to_inference` swaps a model's compressed ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` layers for :class:`CompressedLinear` / :class:`CompressedConv1d` /
:class:`CompressedConv2d`, which hold row pointers, narrow column indices, packed codes
and the codebook, and compute ``y = x Wᵀ + b`` from them with numba kernels (or torch CSR,
or dense, whichever was fastest for the layer when it was converted).

Example:
    >>> from torchprune_share import level_prune, register_weight_sharing
    >>> net = nn.Sequential(nn.Linear(512, 256))
    >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=4)
    >>> x = torch.randn(2, 512)
    >>> expected = net(x).detach()
    >>> fast = to_inference(net, backend="kernel")
    >>> type(fast[0]).__name__, bool(torch.allclose(fast(x), expected, atol=1e-5))
    ('CompressedLinear', True)
"""

from .conv import CompressedConv1d, CompressedConv2d
from .convert import (
    InferenceSummary,
    LayerChoice,
    inference_module,
    inference_summary,
    to_inference,
)
from .kernels import AVAILABLE as KERNELS_AVAILABLE
from .layout import Layout, build_layout
from .modules import CompressedLinear, CompressedModule
from .source import UnsupportedWeight, WeightParts, weight_parts

__all__ = [
    "KERNELS_AVAILABLE",
    "CompressedConv1d",
    "CompressedConv2d",
    "CompressedLinear",
    "CompressedModule",
    "InferenceSummary",
    "LayerChoice",
    "Layout",
    "UnsupportedWeight",
    "WeightParts",
    "build_layout",
    "inference_module",
    "inference_summary",
    "to_inference",
    "weight_parts",
]
