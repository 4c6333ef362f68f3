"""The numeric side of weight sharing: index dtypes, the gather with its backward, clustering.

Tensors in, tensors out: nothing here knows an ``nn.Module``. The parametrization
:class:`~torchprune_share.WeightSharing` is built on these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import kmeans
from .config import DEFAULT_INIT, SharingConfig

__all__ = ["SPREAD", "CodebookGather", "cluster", "index_dtype", "max_code"]


def max_code(dtype: torch.dtype) -> int:
    """The largest code an index of integer ``dtype`` holds.

    Args:
        dtype (torch.dtype): an integer dtype.

    Example:
        >>> max_code(torch.uint8)
        255
    """
    return torch.iinfo(dtype).max


def index_dtype(max_code: int) -> torch.dtype:
    """Return the integer dtype of an index holding codes ``0..max_code``.

    ``uint8`` up to code 255, ``int32`` above. ``int16`` would be smaller for 9- to
    15-bit codes (and for 8-bit sharing of a pruned tensor, whose 256 centroids plus the
    zero code need 257 codes), but neither gloo nor NCCL can broadcast ``int16`` tensors,
    and ``DistributedDataParallel`` broadcasts every buffer; ``int32`` is also the dtype
    the gather runs on.

    Args:
        max_code (int): the largest code that must be representable.

    Returns:
        ``torch.uint8`` or ``torch.int32``.

    Example:
        >>> index_dtype(255), index_dtype(256)
        (torch.uint8, torch.int32)
    """
    if max_code <= torch.iinfo(torch.uint8).max:
        return torch.uint8
    return torch.int32


# Consecutive weights usually share a code (above all the pruned zero), and adding them
# one after another into the same slot serialises on that slot: accumulating into SPREAD
# copies of the table (weight i into copy i % SPREAD) and summing the copies makes the
# backward ~2.5x faster. The forward reads the same copies, so one cached index serves both.
SPREAD = 8


class CodebookGather(torch.autograd.Function):
    """``table[flat_index]`` with the Deep Compression backward (Eq. 3).

    ``table`` is the codebook with a zero appended to each row, repeated :data:`SPREAD`
    times. The gradient of a centroid is the sum of the gradients of the weights assigned
    to it: ``index_add`` of the weight gradient into the copies, then summed over them.
    The appended zero's gradient is dropped, so the zero can never move.

    In the ``setup_context`` form, with out-of-place ops only, so that ``torch.func``
    transforms (``grad``, ``vmap`` over a batch of codebooks) and ``torch.export`` trace it.

    Args:
        codebook (Tensor): ``(k,)`` or ``(C, k)``.
        flat_index (Tensor): ``int32``, from :meth:`WeightSharing.flat_index` (weight ``i``
            reads copy ``i % SPREAD`` of the table).
        shape (torch.Size): the weight's shape.

    Example:
        >>> flat = torch.tensor([0, 5, 10], dtype=torch.int32)  # codes 0, 1, 2 in copies 0, 1, 2
        >>> CodebookGather.apply(torch.tensor([1.0, 2.0, 3.0]), flat, torch.Size([3]))
        tensor([1., 2., 3.])
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(codebook: Tensor, flat_index: Tensor, shape: torch.Size) -> Tensor:
        zero = codebook.new_zeros((*codebook.shape[:-1], 1))
        table = torch.cat([codebook, zero], dim=-1).reshape(-1).repeat(SPREAD)
        return table.index_select(0, flat_index).view(shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        codebook, flat_index, _ = inputs
        ctx.save_for_backward(flat_index)
        ctx.codebook_shape = codebook.shape

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (flat_index,) = ctx.saved_tensors
        *lead, k = ctx.codebook_shape
        slots = grad.new_zeros(SPREAD * int(torch.Size(lead).numel()) * (k + 1))
        slots = slots.index_add(0, flat_index, grad.reshape(-1))
        return slots.view(SPREAD, *lead, k + 1).sum(0)[..., :k], None, None


def cluster(
    weight: Tensor,
    mask: Tensor | None,
    *,
    bits: int | None = None,
    granularity: str = "per_tensor",
    channel_axis: int = 0,
    init: str = DEFAULT_INIT,
    method: str = "lloyd",
    config: SharingConfig | None = None,
    generator: torch.Generator | None = None,
    importance: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Cluster the kept entries of ``weight`` into a codebook and an index.

    Args:
        weight (Tensor): the dense floating-point tensor.
        mask (Tensor, optional): ``bool``, ``False`` for pruned entries (they get the zero
            code). ``None`` keeps every entry.
        bits (int): at most ``2**bits`` centroids per codebook.
        granularity (str): ``"per_tensor"`` or ``"per_channel"``.
        channel_axis (int): the channel dimension for ``"per_channel"``.
        init (str): see :func:`torchprune_share.kmeans.kmeans1d`.
        method (str): see :func:`torchprune_share.kmeans.kmeans1d`.
        config (SharingConfig, optional): all of the above in one object, in place of them.
        generator (torch.Generator, optional): randomness for random inits.
        importance (Tensor, optional): non-negative per-entry weights of ``weight``'s
            shape for a weighted k-means (trusted: checked by the caller).

    Returns:
        ``(codebook, index)``: codebook of ``weight``'s dtype, ``(k,)`` or ``(C, k)``, and
        the index in ``weight``'s shape with the smallest sufficient dtype
        (see :func:`index_dtype`).

    Example:
        >>> cb, idx = cluster(torch.tensor([0.1, 0.2, 0.9, 1.0]), None, bits=1)
        >>> cb, idx
        (tensor([0.1500, 0.9500]), tensor([0, 0, 1, 1], dtype=torch.uint8))
    """
    if config is None:
        if bits is None:
            raise TypeError("cluster needs bits= or config=")
        config = SharingConfig(
            bits=bits, granularity=granularity, channel_axis=channel_axis, init=init, method=method
        )
    config = config.resolved()
    if mask is None:
        mask = torch.ones_like(weight, dtype=torch.bool)
    # Boolean gathers and scatters of tens of millions of entries cost as much as the
    # clustering itself; a tensor with nothing pruned needs neither.
    dense = bool(mask.all())
    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(work_dtype)
    weights = None if importance is None else importance.detach().to(work_dtype) * mask
    if config.granularity == "per_tensor":
        codebook, codes = _per_tensor(w, mask, dense, config, generator, weights)
    else:
        codebook, codes = _per_channel(w, mask, config, generator, weights)
    k = codebook.shape[-1]
    top = max(k - 1, 0) if dense else k
    return codebook.to(weight.dtype), codes.to(index_dtype(top)).contiguous()


def _per_tensor(
    w: Tensor,
    mask: Tensor,
    dense: bool,
    config: SharingConfig,
    generator: Any,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One codebook for the kept entries of ``w``; int64 codes, the pruned ones ``k``."""
    kept = w.reshape(-1) if dense else w[mask]
    if kept.numel() == 0:
        return w.new_zeros(0), torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    sw = None if weights is None else (weights.reshape(-1) if dense else weights[mask])
    codebook, labels = kmeans.kmeans1d(
        kept,
        2**config.bits,
        init=config.init,
        method=config.method,
        sample_weight=sw,
        generator=generator,
    )
    if dense:
        return codebook, labels.to(w.device).view(w.shape)
    codes = torch.full(w.shape, codebook.numel(), dtype=torch.int64, device=w.device)
    codes[mask] = labels.to(w.device)
    return codebook, codes


def _per_channel(
    w: Tensor,
    mask: Tensor,
    config: SharingConfig,
    generator: Any,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One codebook per slice along the channel axis (rows clustered together, batched)."""
    dim = config.channel_dim(w.dim())
    rows = w.movedim(dim, 0).reshape(w.shape[dim] if w.dim() else 1, -1)
    row_mask = mask.movedim(dim, 0).reshape(rows.shape)
    if not bool(row_mask.any()):
        codebook = w.new_zeros(rows.shape[0], 0)
        labels = torch.zeros(rows.shape, dtype=torch.int64, device=w.device)
    else:
        codebook, labels = kmeans.kmeans1d(
            rows,
            2**config.bits,
            init=config.init,
            method=config.method,
            sample_weight=(
                row_mask.to(w.dtype)
                if weights is None
                else weights.movedim(dim, 0).reshape(rows.shape)
            ),
            generator=generator,
        )
    labels = torch.where(row_mask, labels.to(w.device), codebook.shape[-1])
    moved_shape = (w.shape[dim], *[s for i, s in enumerate(w.shape) if i != dim])
    return codebook, labels.reshape(moved_shape).movedim(0, dim)
