"""Reading a module's compressed weight as natural parts: the one place that knows how.

Everything in :mod:`torchprune_share.inference` that looks at a trained model's tensors
goes through :func:`weight_parts`, so a change in how the package stores a compressed
tensor touches this file only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from ..parametrizations import PruningMask, WeightSharing, get_reparametrization

__all__ = ["UnsupportedWeight", "WeightParts", "weight_parts"]


class UnsupportedWeight(ValueError):
    """The tensor is stored in a way the inference modules cannot read (a ``ValueError``)."""


@dataclass
class WeightParts:
    """A weight as its kept entries, flattened to ``(out_features, in_features)``.

    Attributes:
        out_features (int): rows (size of dimension 0).
        in_features (int): product of the other dimensions.
        positions (np.ndarray): ``int64`` row-major positions of the kept entries.
        codes (np.ndarray or None): one code per kept entry, with ``codebook``.
        codebook (Tensor or None): ``(k,)`` or ``(out_features, k)`` centroids.
        values (np.ndarray or None): ``float32`` values when there is no codebook.
        kind (str): ``"shared"``, ``"pruned"``, ``"torch-pruned"`` or ``"dense"``.
    """

    out_features: int
    in_features: int
    positions: np.ndarray
    codes: np.ndarray | None
    codebook: Tensor | None
    values: np.ndarray | None
    kind: str


def _flat(t: Tensor) -> Tensor:
    return t.detach().reshape(t.shape[0], -1)


def _shared(module: nn.Module, name: str, ws: WeightSharing) -> WeightParts:
    index = _flat(ws.index)
    keep = _flat(ws.kept()).cpu().numpy()
    codebook = module.parametrizations[name].original.detach().to(torch.float32).cpu()
    positions = np.flatnonzero(keep).astype(np.int64)
    codes = index.cpu().numpy().reshape(-1)[positions]
    rows, cols = index.shape
    if ws.granularity == "per_channel" and ws.channel_dim != 0:
        # One codebook per input channel: the kernels index codebooks by output row, so
        # such a tensor is held as its float values instead.
        channel = ws.index.shape[ws.channel_dim]
        shape = [1] * ws.index.dim()
        shape[ws.channel_dim] = channel
        chan = torch.arange(channel).view(shape).expand(ws.index.shape)
        chan = _flat(chan).numpy().reshape(-1)[positions]
        values = codebook.numpy()[chan, codes.astype(np.int64)]
        return WeightParts(rows, cols, positions, None, None, values, "shared")
    return WeightParts(rows, cols, positions, codes, codebook, None, "shared")


def _from_values(value: Tensor, keep: Tensor, kind: str) -> WeightParts:
    v = _flat(value).to(torch.float32).cpu()
    positions = np.flatnonzero(_flat(keep).cpu().numpy()).astype(np.int64)
    values = v.numpy().reshape(-1)[positions]
    return WeightParts(v.shape[0], v.shape[1], positions, None, None, values, kind)


def weight_parts(module: nn.Module, name: str = "weight") -> WeightParts:
    """Read ``module.<name>`` as :class:`WeightParts`, whatever holds it.

    Handles this package's :class:`~torchprune_share.PruningMask` and
    :class:`~torchprune_share.WeightSharing`, ``torch.nn.utils.prune`` hooks, and plain
    dense parameters (their zeros count as pruned).

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name. Default: ``"weight"``.

    Returns:
        The parts; the module is not changed.

    Raises:
        UnsupportedWeight: a foreign parametrization, or no floating-point tensor.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
        >>> p = weight_parts(lin)
        >>> p.kind, p.positions.tolist(), p.values.tolist()
        ('dense', [0, 2, 5], [1.0, 2.0, 3.0])
    """
    reparam = get_reparametrization(module, name)
    with torch.no_grad():
        if isinstance(reparam, WeightSharing):
            return _shared(module, name, reparam)
        if isinstance(reparam, PruningMask):
            original = module.parametrizations[name].original
            return _from_values(original, reparam.mask, "pruned")
        if parametrize.is_parametrized(module, name):
            raise UnsupportedWeight(f"{name!r} carries a foreign parametrization")
        hooked = any(
            isinstance(h, prune.BasePruningMethod) and h._tensor_name == name
            for h in module._forward_pre_hooks.values()
        )
        if hooked:
            mask = getattr(module, name + "_mask")
            value = getattr(module, name + "_orig") * mask
            return _from_values(value, mask != 0, "torch-pruned")
        weight = getattr(module, name, None)
        if not isinstance(weight, Tensor) or not weight.is_floating_point():
            raise UnsupportedWeight(f"{name!r} is no floating-point tensor")
        return _from_values(weight, weight != 0, "dense")
