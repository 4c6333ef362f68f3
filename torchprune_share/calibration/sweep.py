r"""Column sweeps with error feedback through the layer Hessian (GPTQ / SparseGPT class).

Both sweeps walk the columns of a 2-D weight ``W`` (rows = outputs, columns = inputs)
in order. Column ``i`` is replaced by its compressed value ``q`` (nearest centroid, or
zero where pruned), and its error ``e = (w_i - q) / U[i, i]`` is subtracted as
``e · U[i, i:]`` from the columns not yet visited, ``U`` the upper Cholesky factor of
``H⁻¹`` (:func:`~torchprune_share.calibration.hessian.inverse_cholesky`). This is the
optimal update of the remaining columns for the output error ``tr(Δ H Δᵀ)`` (Frantar et
al., GPTQ 2022 and SparseGPT 2023). Updates are applied lazily per block of columns, with
one matrix product for the rest of the weight per block.

Tensors in, tensors out: no ``nn.Module`` here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels

__all__ = [
    "codebook_sweep",
    "lookup",
    "nearest_codes",
    "output_error",
    "prune_sweep",
    "quotas",
]


def _fast(w: Tensor) -> bool:
    return kernels.AVAILABLE and w.device.type == "cpu" and w.dtype == torch.float32


def _sweep_block(
    w1: Tensor, u1: Tensor, table: Tensor, mids: Tensor, keep1: Tensor, c1: Tensor, err1: Tensor
) -> None:
    """:func:`~.kernels.sweep_block` on tensors (``w1``, ``c1``, ``err1`` contiguous, written)."""
    as_np = lambda t: t.to(torch.float32).contiguous().numpy()  # noqa: E731
    kernels.sweep_block(
        w1.numpy(),
        as_np(u1),
        as_np(table),
        as_np(mids),
        keep1.contiguous().numpy(),
        c1.numpy(),
        err1.numpy(),
    )


def nearest_codes(values: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest centroid for each value.

    Args:
        values (Tensor): ``(R,)`` values, one per row.
        codebook (Tensor): ``(R, k)`` (one sorted codebook per row) or ``(1, k)``
            (one sorted codebook for all), ascending along the last dimension.

    Returns:
        ``int64`` ``(R,)`` codes; ties go to the lower centroid.

    Example:
        >>> nearest_codes(torch.tensor([0.1, 0.6, 2.0]), torch.tensor([[0.0, 0.5, 1.0]]))
        tensor([0, 1, 2])
    """
    mids = (codebook[:, 1:] + codebook[:, :-1]) * 0.5
    return (values.unsqueeze(1) > mids).sum(1)


def lookup(codebook: Tensor, codes: Tensor) -> Tensor:
    """Values of ``codes`` (``(R, ...)``, ``-1`` for pruned) in a ``(R, k)`` or ``(1, k)`` codebook.

    Example:
        >>> lookup(torch.tensor([[1.0, 2.0]]), torch.tensor([[0, -1], [1, 1]]))
        tensor([[1., 0.],
                [2., 2.]])
    """
    flat = codes.reshape(codes.shape[0], -1)
    table = codebook.expand(flat.shape[0], -1)
    vals = table.gather(1, flat.clamp(min=0))
    return torch.where(flat >= 0, vals, vals.new_zeros(())).view(codes.shape)


def output_error(w: Tensor, q: Tensor, h: Tensor) -> float:
    r"""``tr((W - Q) H (W - Q)ᵀ)``: the summed squared output error on the calibration inputs.

    Example:
        >>> output_error(torch.ones(1, 2), torch.zeros(1, 2), torch.eye(2))
        2.0
    """
    d = (w - q).to(torch.float32)
    # The product in float32 (a float64 GEMM costs 4x); the sum of non-negative-ish terms
    # in float64.
    return float(((d @ h.to(torch.float32)) * d).sum(dtype=torch.float64))


def quotas(total: int, capacity: Tensor) -> Tensor:
    """Split ``total`` over groups in proportion to ``capacity``, exactly and never above it.

    Example:
        >>> quotas(5, torch.tensor([4, 4, 2])).tolist()
        [2, 2, 1]
    """
    cap = capacity.to(torch.float64)
    share = cap.cumsum(0) / max(float(cap.sum()), 1.0) * total
    edges = torch.cat([share.new_zeros(1), share.round()])
    return torch.minimum((edges[1:] - edges[:-1]).to(torch.int64), capacity.to(torch.int64))


def codebook_sweep(
    w: Tensor,
    u: Tensor,
    codebook: Tensor,
    keep: Tensor,
    *,
    block: int = 128,
) -> Tensor:
    r"""Assign every kept entry of ``w`` to a centroid, column by column, with error feedback.

    Pruned entries (``keep`` False) are fixed at zero; their error, like every other, is
    compensated by the kept entries of the columns not yet visited.

    Args:
        w (Tensor): ``(R, C)`` float32 weight.
        u (Tensor): ``(C, C)`` upper Cholesky factor of ``H⁻¹``.
        codebook (Tensor): ``(R, k)`` per-row or ``(1, k)`` shared codebook, sorted.
        keep (Tensor): ``(R, C)`` ``bool``.
        block (int): columns per lazy block.

    Returns:
        ``int64`` ``(R, C)`` codes into ``codebook``, ``-1`` where pruned.

    Example:
        >>> w = torch.tensor([[0.2, 0.9], [0.6, 0.1]])
        >>> cb = torch.tensor([[0.0, 1.0]])
        >>> codebook_sweep(w, torch.eye(2), cb, torch.ones(2, 2, dtype=torch.bool))
        tensor([[0, 1],
                [1, 0]])
    """
    rows, cols = w.shape
    work = w.clone()
    codes = torch.full((rows, cols), -1, dtype=torch.int64, device=w.device)
    table = codebook.expand(rows, -1).contiguous()
    mids = ((table[:, 1:] + table[:, :-1]) * 0.5).contiguous()
    fast = _fast(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = work[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        if fast:
            c1 = torch.empty(w1.shape, dtype=torch.int64)
            _sweep_block(w1, u1, table, mids, keep[:, i1:i2], c1, err1)
            codes[:, i1:i2] = c1
        else:
            for j in range(i2 - i1):
                col = w1[:, j]
                # searchsorted(side="left") on the midpoints: ties to the lower centroid, as
                # nearest_codes.
                c = torch.searchsorted(mids, col.unsqueeze(1).contiguous()).squeeze(1)
                q = table.gather(1, c.unsqueeze(1)).squeeze(1)
                kept = keep[:, i1 + j]
                q = torch.where(kept, q, q.new_zeros(()))
                codes[:, i1 + j] = torch.where(kept, c, -1)
                err = (col - q) / u1[j, j]
                w1[:, j:] -= err.unsqueeze(1) * u1[j, j:].unsqueeze(0)
                err1[:, j] = err
        work[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes


def prune_sweep(
    w: Tensor,
    u: Tensor,
    keep: Tensor,
    extra: int,
    *,
    block: int = 128,
) -> tuple[Tensor, Tensor]:
    r"""Prune ``extra`` more entries of ``w`` and update the survivors (SparseGPT).

    Per block of columns, the entries with the smallest ``w² / U[i, i]²`` (the increase of
    the output error if pruned alone, on the weights as already updated) are pruned, the
    block's share of ``extra`` being proportional to its kept entries; then the block is
    swept, each pruned entry's error compensated by the later columns.

    Args:
        w (Tensor): ``(R, C)`` float32 weight (target); entries outside ``keep`` are zeroed
            by the sweep, their error compensated like that of the newly pruned ones.
        u (Tensor): ``(C, C)`` upper Cholesky factor of ``H⁻¹``.
        keep (Tensor): ``(R, C)`` ``bool``, the entries not yet pruned.
        extra (int): how many kept entries to prune, at most ``keep.sum()``.
        block (int): columns per block.

    Returns:
        ``(new_keep, new_w)``: the mask and the updated weight (zero where pruned).

    Example:
        >>> w = torch.tensor([[0.1, 1.0], [2.0, 0.2]])
        >>> keep, new = prune_sweep(w, torch.eye(2), torch.ones(2, 2, dtype=torch.bool), 2)
        >>> keep.tolist(), new.tolist()
        ([[False, True], [True, False]], [[0.0, 1.0], [2.0, 0.0]])
    """
    _, cols = w.shape
    # Entries pruned before are zeroed by the sweep like the new ones, so whatever their
    # target holds is compensated too.
    work = w.clone()
    new_keep = keep.clone()
    starts = list(range(0, cols, block))
    fast = _fast(w)
    capacity = torch.stack([keep[:, s : min(s + block, cols)].sum() for s in starts])
    share = quotas(extra, capacity)
    for b, i1 in enumerate(starts):
        i2 = min(i1 + block, cols)
        w1 = work[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        keep1 = keep[:, i1:i2]
        n = int(share[b])
        if n:
            score = w1.square() / torch.diagonal(u1).square().unsqueeze(0)
            score = torch.where(keep1, score, score.new_full((), float("inf")))
            chosen = torch.topk(score.reshape(-1), n, largest=False).indices
            flat = keep1.reshape(-1).clone()
            flat[chosen] = False
            keep1 = flat.view(keep1.shape)
        new_keep[:, i1:i2] = keep1
        err1 = torch.zeros_like(w1)
        if fast:
            none = w1.new_empty(w1.shape[0], 0)
            _sweep_block(w1, u1, none, none, keep1, torch.empty(w1.shape, dtype=torch.int64), err1)
        else:
            for j in range(i2 - i1):
                col = w1[:, j]
                q = torch.where(keep1[:, j], col, col.new_zeros(()))
                err = (col - q) / u1[j, j]
                w1[:, j:] -= err.unsqueeze(1) * u1[j, j:].unsqueeze(0)
                w1[:, j] = q
                err1[:, j] = err
        work[:, i1:i2] = w1
        work[:, i2:] -= err1 @ u[i1:i2, i2:]
    return new_keep, torch.where(new_keep, work, work.new_zeros(()))
