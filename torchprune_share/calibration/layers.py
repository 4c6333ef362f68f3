"""What calibration can see of a layer: its weight as a matrix and its inputs as rows.

A ``Linear`` weight ``(out, in)`` is a matrix with input rows ``x``; a ``Conv1d``/``Conv2d``
weight ``(out, in, *kernel)`` is the matrix ``(out, in · Π kernel)`` applied to the
unfolded input patches (``F.unfold``), so the same Hessian methods apply; an
``Embedding`` weight is the matrix whose row ``t`` is the output for token ``t``, so its
Hessian is diagonal with the token counts. Anything else is compressed data-free.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "COUNTS",
    "HESSIAN",
    "input_rows",
    "is_plain_linear",
    "layer_kind",
    "padding_mask",
    "token_counts",
]

HESSIAN = "hessian"  # inputs give H = Σ x xᵀ
COUNTS = "counts"  # an embedding: token counts


def is_plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` itself, parametrized or not.

    A subclass may change what its weight multiplies; ``parametrize`` swaps a module's class
    for a ``ParametrizedLinear`` subclass with ``nn.Linear``'s own forward, so a pruned
    layer still counts.

    Example:
        >>> from torchprune_share import level_prune
        >>> lin = nn.Linear(4, 2)
        >>> is_plain_linear(lin), is_plain_linear(level_prune(lin, "weight", 0.5))
        (True, True)
        >>> is_plain_linear(type("Mine", (nn.Linear,), {})(4, 2))
        False
    """
    return parametrize.type_before_parametrizations(module) is nn.Linear


def layer_kind(module: nn.Module, name: str) -> str | None:
    """How calibration statistics of ``module.<name>`` are gathered, or ``None`` (data-free).

    Example:
        >>> layer_kind(nn.Linear(2, 2), "weight"), layer_kind(nn.Linear(2, 2), "bias")
        ('hessian', None)
    """
    if name != "weight":
        return None
    if isinstance(module, nn.Linear):
        return HESSIAN
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
        return HESSIAN
    if isinstance(module, nn.Embedding):
        return COUNTS
    return None


def _conv_patches(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        dilation = (1, *module.dilation)
        padding = module.padding if isinstance(module.padding, str) else (0, *module.padding)
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        padding = module.padding
    if x.dim() == 3:  # unbatched input
        x = x.unsqueeze(0)
    if module.padding_mode != "zeros" and not isinstance(padding, str):
        pad: list[int] = []
        for p in reversed(padding):
            pad += [p, p]
        x = F.pad(x, pad, mode=module.padding_mode)
        padding = 0
    if padding == "same":
        # The patches of "same" padding: pad as conv does (extra on the right/bottom).
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pad = []
        for t in reversed(total):
            pad += [t // 2, t - t // 2]
        x, padding = F.pad(x, pad), 0
    elif padding == "valid":
        padding = 0
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def padding_mask(batch: object) -> Tensor | None:
    """The positions of a batch that hold data: its ``attention_mask`` (Hugging Face's
    convention, ``(B, T)``, nonzero where a token is real) as ``bool``, else ``None``.

    Padded positions are computed by the model but are not inputs anyone cares about: left
    in, they are half the rows of a typical padded batch and pull the statistics toward
    what the padding token looks like after each layer.

    Example:
        >>> padding_mask({"input_ids": torch.ones(1, 3), "attention_mask": torch.tensor([[1, 1, 0]])})
        tensor([[ True,  True, False]])
        >>> padding_mask(torch.ones(2, 3)) is None
        True
    """
    if not isinstance(batch, Mapping):
        return None
    mask = batch.get("attention_mask")
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        return None
    return mask != 0


def input_rows(module: nn.Module, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """The rows ``x_t`` with ``y_t = W x_t`` for one call of a :data:`HESSIAN` layer.

    Args:
        module (nn.Module): the layer.
        x (Tensor): its input.
        mask (Tensor, optional): ``bool`` positions to keep (see :func:`padding_mask`),
            used for a Linear whose input is ``(*mask.shape, C)``, ignored otherwise.

    Example:
        >>> conv = nn.Conv2d(2, 3, 2)
        >>> input_rows(conv, torch.randn(1, 2, 3, 3)).shape
        torch.Size([4, 8])
        >>> input_rows(nn.Linear(4, 2), torch.randn(1, 3, 4), torch.tensor([[1, 0, 1]]) > 0).shape
        torch.Size([2, 4])
    """
    x = x.detach()
    if isinstance(module, nn.Linear):
        if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
            return x[mask.to(x.device)]
        return x.reshape(-1, x.shape[-1])
    return _conv_patches(module, x)


def token_counts(module: nn.Embedding, idx: Tensor, mask: Tensor | None = None) -> Tensor:
    """How often each row of the embedding was looked up in one call (at ``mask``'s
    positions when it has ``idx``'s shape).

    Example:
        >>> token_counts(nn.Embedding(4, 2), torch.tensor([[0, 2, 2]]))
        tensor([1., 0., 2., 0.])
    """
    idx = idx.detach()
    if mask is not None and tuple(idx.shape) == tuple(mask.shape):
        idx = idx[mask.to(idx.device)]
    flat = idx.reshape(-1).to(torch.int64)
    return torch.bincount(flat, minlength=module.num_embeddings).to(torch.float32)
