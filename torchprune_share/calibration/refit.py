r"""Least-squares refit of codebooks under the layer Hessian, for fixed assignments.

With the codes fixed, the compressed weight is linear in the centroids, and the output
error ``tr((W - Q) H (W - Q)ᵀ)`` is a convex quadratic of them: for one row ``r`` with
one-hot assignment matrix ``S_r`` (``C × k``), the optimum solves
``(S_rᵀ H S_r) c = S_rᵀ H w_r``; for one codebook shared by all rows the systems add up.
Centroids that own no entry keep their value. Tensors in, tensors out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..jit import numba_threads
from . import kernels

if kernels.AVAILABLE:
    import numba

__all__ = ["refit_codebook", "refit_survivors", "sort_codebook"]

# Rows per one-hot block: (rows, C, k) float32 temporaries stay a few MB.
_ROW_CHUNK_ELEMS = 1 << 21


def _normal_equations(w: Tensor, codes: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(S_rᵀ H S_r, S_rᵀ H w_r)`` for every row, in float64."""
    if kernels.AVAILABLE and w.device.type == "cpu":
        threads = numba_threads(torch.get_num_threads())
        kernel = kernels.normal_equations
        if threads > 1:
            numba.set_num_threads(threads)
            kernel = kernels.normal_equations_parallel
        mats, rhs = kernel(
            h.to(torch.float32).contiguous().numpy(),
            w.to(torch.float32).contiguous().numpy(),
            codes.contiguous().numpy(),
            k,
        )
        return torch.from_numpy(mats), torch.from_numpy(rhs)
    rows, cols = w.shape
    wh = w.to(torch.float32) @ h.to(torch.float32)
    mats = torch.empty(rows, k, k, dtype=torch.float64, device=w.device)
    rhs = torch.empty(rows, k, dtype=torch.float64, device=w.device)
    chunk = max(1, _ROW_CHUNK_ELEMS // max(cols * k, 1))
    h32 = h.to(torch.float32)
    for r1 in range(0, rows, chunk):
        r2 = min(r1 + chunk, rows)
        c = codes[r1:r2]
        # One-hot laid out (C, rows * k): H @ S for all rows of the chunk is one wide GEMM
        # (a batch of thin (C, C) @ (C, k) products ran at a tenth of the speed).
        onehot = torch.zeros(cols, r2 - r1, k, dtype=torch.float32, device=w.device)
        onehot.scatter_(2, c.T.clamp(min=0).unsqueeze(2), (c.T >= 0).unsqueeze(2).to(torch.float32))
        hs = (h32 @ onehot.view(cols, -1)).view(cols, r2 - r1, k)
        mats[r1:r2] = torch.einsum("crk,crl->rkl", onehot, hs).to(torch.float64)
        rhs[r1:r2] = torch.einsum("rc,crk->rk", wh[r1:r2], onehot).to(torch.float64)
    return mats, rhs


def _solve(mats: Tensor, rhs: Tensor, old: Tensor) -> Tensor:
    """Solve each system; centroids without entries (zero diagonal) keep ``old``."""
    k = mats.shape[-1]
    empty = torch.diagonal(mats, dim1=-2, dim2=-1) <= 0
    eye = torch.eye(k, dtype=mats.dtype, device=mats.device)
    mats = torch.where(empty.unsqueeze(-1) | empty.unsqueeze(-2), 0.0, mats)
    mats = mats + eye * empty.unsqueeze(-1)
    rhs = torch.where(empty, old.to(mats.dtype), rhs)
    scale = torch.diagonal(mats, dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1)
    reg = 1e-9 * scale * eye * (~empty).unsqueeze(-1)
    sol, info = torch.linalg.solve_ex(mats + reg, rhs)
    ok = (info == 0).unsqueeze(-1) & torch.isfinite(sol)
    return torch.where(ok, sol, old.to(sol.dtype)).to(old.dtype)


def refit_codebook(w: Tensor, codes: Tensor, h: Tensor, codebook: Tensor) -> Tensor:
    r"""The codebook minimising ``tr((W - Q) H (W - Q)ᵀ)`` for the given codes.

    Args:
        w (Tensor): ``(R, C)`` the original (uncompressed) weight.
        codes (Tensor): ``(R, C)`` ``int64`` codes, ``-1`` for pruned entries (fixed zero).
        h (Tensor): ``(C, C)`` layer Hessian (dampened or not).
        codebook (Tensor): ``(R, k)`` per-row or ``(1, k)`` shared codebook now in use.

    Returns:
        The refitted codebook, same shape (not sorted).

    Example:
        >>> w = torch.tensor([[1.0, 3.0]])
        >>> refit_codebook(w, torch.tensor([[0, 0]]), torch.eye(2), torch.tensor([[0.0]]))
        tensor([[2.]])
    """
    k = codebook.shape[1]
    mats, rhs = _normal_equations(w, codes, h, k)
    if codebook.shape[0] == 1:
        mats, rhs = mats.sum(0, keepdim=True), rhs.sum(0, keepdim=True)
    return _solve(mats, rhs, codebook)


def sort_codebook(codebook: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each codebook row ascending and renumber ``codes`` (``-1`` stays ``-1``).

    Example:
        >>> sort_codebook(torch.tensor([[2.0, 1.0]]), torch.tensor([[0, 1, -1]]))
        (tensor([[1., 2.]]), tensor([[ 1,  0, -1]]))
    """
    sorted_cb, order = codebook.sort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    table = rank.expand(codes.shape[0], -1)
    renamed = table.gather(1, codes.clamp(min=0))
    return sorted_cb, torch.where(codes >= 0, renamed, -1)


def refit_survivors(
    w: Tensor, keep: Tensor, h: Tensor, start: Tensor, *, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    r"""The kept values minimising ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` with pruned entries fixed at zero.

    Row ``r`` with kept set ``S`` has the closed form ``ŵ_S = w_S + H_SS⁻¹ H_S,P w_P``;
    instead of one solve per row (each row has its own ``S``), preconditioned conjugate
    gradients run on all rows at once, one ``(R, C) @ (C, C)`` product per iteration,
    starting from ``start`` (the SparseGPT sweep's result, already close).

    Args:
        w (Tensor): ``(R, C)`` the original weight.
        keep (Tensor): ``(R, C)`` ``bool`` mask.
        h (Tensor): ``(C, C)`` dampened Hessian (positive definite).
        start (Tensor): ``(R, C)`` initial guess, zero where pruned.
        iters (int): at most this many iterations.
        tol (float): stop when every row's residual norm² is below ``tol`` times its start.

    Returns:
        ``(R, C)`` float32 weight, zero where pruned.

    Example:
        >>> w = torch.tensor([[1.0, 1.0]])
        >>> h = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> keep = torch.tensor([[True, False]])
        >>> refit_survivors(w, keep, h, torch.zeros(1, 2))
        tensor([[1.5000, 0.0000]])
    """
    m = keep.to(torch.float32)
    h = h.to(torch.float32)
    d = torch.diagonal(h).clamp(min=1e-12).unsqueeze(0)
    x = start.to(torch.float32) * m
    r = m * ((w.to(torch.float32) - x) @ h)
    z = r / d
    p = z.clone()
    rz = (r * z).sum(1, keepdim=True)
    first = rz.clone()
    for _ in range(iters):
        if bool((rz <= tol * first.clamp(min=1e-30)).all()):
            break
        ap = m * (p @ h)
        alpha = rz / (p * ap).sum(1, keepdim=True).clamp(min=1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        z = r / d
        rz_new = (r * z).sum(1, keepdim=True)
        p = z + (rz_new / rz.clamp(min=1e-30)) * p
        rz = rz_new
    return x * m
