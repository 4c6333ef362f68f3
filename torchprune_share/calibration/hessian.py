"""The layer Hessian of calibrated compression: accumulation and its inverse factor.

For a layer ``y = W x`` the output error of a change ``Δ`` of ``W`` on calibration inputs
``x_1..x_n`` is ``Σ_t ‖Δ x_t‖² = tr(Δ H Δᵀ)`` with ``H = Σ_t x_t x_tᵀ``: every method in
this package that compensates errors (the GPTQ- and SparseGPT-class column sweeps) or
weighs entries (``diag H``) works from ``H``. Tensors in, tensors out: no ``nn.Module``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..config import DEFAULT_DAMPING

__all__ = ["HessianAccumulator", "inverse_cholesky"]

logger = logging.getLogger(__name__)

# Retries of a failed Cholesky multiply the dampening by this factor.
_DAMP_GROWTH = 10.0
_MAX_TRIES = 6


# Below this width the full product is as fast as the blocked one.
_BLOCKED_FROM = 768


def _add_gram(out: Tensor, x: Tensor) -> None:
    """``out += xᵀ x`` on the diagonal blocks and the upper off-diagonal one.

    ``xᵀ x`` is symmetric and torch has no rank-k update (BLAS ``syrk``): in halves,
    three products of a quarter each are 3/4 of the work (0.090 against 0.117 s for 2,600
    rows of 1,536 on one thread); the widest layers' ``H`` is the largest cost of
    calibration after the forwards. The lower block is left for :func:`_mirrored`, once
    (adding its transpose per batch, a strided pass, took a sixth of the accumulation).
    """
    d = x.shape[1]
    if d < _BLOCKED_FROM:
        out.addmm_(x.T, x)
        return
    k = d // 2
    a, b = x[:, :k], x[:, k:]
    out[:k, :k].addmm_(a.T, a)
    out[k:, k:].addmm_(b.T, b)
    out[:k, k:].addmm_(a.T, b)


def _mirrored(total: Tensor) -> Tensor:
    """The full sum of :func:`_add_gram`'s products: its lower block the upper's mirror."""
    d = total.shape[0]
    if d < _BLOCKED_FROM:
        return total
    k = d // 2
    full = total.clone()
    full[k:, :k] = total[:k, k:].T
    return full


class HessianAccumulator:
    r"""Running ``H = (1/n) Σ_t x_t x_tᵀ`` over rows of layer inputs, in float32.

    Args:
        dim (int): the input width (columns of the weight).
        device (torch.device, optional): where ``H`` lives. Default: CPU.
        weight (Tensor, optional): the layer's ``(R, dim)`` weight ``W``, when the cross
            term is only needed times ``W`` (:func:`~.matrix.dense_target` needs
            ``W C``): where that is cheaper (``2 R < dim``, an FFN's output layer) it is
            accumulated as ``Σ (W x_ref) xᵀ``, ``2 R dim`` multiply-adds a row instead of
            ``dim²``, and :attr:`cross_weight` is ``W``.

    Example:
        >>> acc = HessianAccumulator(3)
        >>> acc.add(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        >>> acc.hessian()
        tensor([[0.5000, 0.0000, 1.0000],
                [0.0000, 0.5000, 0.0000],
                [1.0000, 0.0000, 2.0000]])
    """

    def __init__(
        self, dim: int, device: torch.device | str | None = None, weight: Tensor | None = None
    ) -> None:
        self.sum = torch.zeros(dim, dim, dtype=torch.float32, device=device)
        self.cross_weight: Tensor | None = None
        if weight is not None and weight.dim() == 2 and weight.shape[1] == dim:
            if 2 * weight.shape[0] < dim:
                # A copy: what was multiplied in must not change with the parameter.
                self.cross_weight = weight.detach().to(self.sum.device, torch.float32, copy=True)
        self.cross_sum: Tensor | None = None
        self.reference_sum: Tensor | None = None
        self.row_sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, rows: Tensor, reference: Tensor | None = None) -> None:
        """Add the rows ``(t, dim)`` of one batch of inputs.

        Args:
            rows (Tensor): the inputs the compressed layer will see.
            reference (Tensor, optional): the inputs the dense layer saw for the same
                tokens (same shape): accumulates ``Σ x_ref xᵀ`` (or ``Σ (W x_ref) xᵀ``)
                for :meth:`cross`.
        """
        x = rows.detach().reshape(-1, self.sum.shape[0]).to(self.sum.device, torch.float32)
        _add_gram(self.sum, x)
        # A float32 sum per batch (a float64 one converts every entry: 4x slower), added up
        # in float64 across batches.
        self.row_sum += x.sum(0)
        if reference is not None:
            r = reference.detach().reshape(x.shape).to(x.device, torch.float32)
            lhs = r if self.cross_weight is None else r @ self.cross_weight.T
            if self.cross_sum is None or self.reference_sum is None:
                self.cross_sum = self.sum.new_zeros(lhs.shape[1], self.sum.shape[0])
                self.reference_sum = torch.zeros_like(self.row_sum)
            self.cross_sum.addmm_(lhs.T, x)
            self.reference_sum += r.sum(0)
        self.count += x.shape[0]

    def hessian(self) -> Tensor:
        """``H``, the mean of ``x xᵀ`` (zeros before any row was added)."""
        return _mirrored(self.sum) / max(self.count, 1)

    def mean(self) -> Tensor:
        """The mean input row (float32)."""
        return (self.row_sum / max(self.count, 1)).to(torch.float32)

    def reference_mean(self) -> Tensor | None:
        """The mean reference row (float32) when references were given, else ``None``."""
        if self.reference_sum is None:
            return None
        return (self.reference_sum / max(self.count, 1)).to(torch.float32)

    def cross(self) -> Tensor | None:
        """``(1/n) Σ x_ref xᵀ`` (``(1/n) Σ (W x_ref) xᵀ`` with :attr:`cross_weight`) when
        references were given, else ``None``."""
        return None if self.cross_sum is None else self.cross_sum / max(self.count, 1)


def inverse_cholesky(h: Tensor, damping: float = DEFAULT_DAMPING) -> tuple[Tensor, Tensor, float]:
    r"""Upper Cholesky factor ``U`` of ``(H + λ I)⁻¹``, as the column sweeps need it.

    Dead inputs (zero diagonal: an input that is always zero on the calibration data) get
    a unit diagonal, so their weights' errors propagate nowhere. ``λ`` is ``damping``
    times the mean diagonal; if the factorisation fails (``H`` numerically singular), it is
    retried with ten times the dampening, up to six times, and the retry is logged.

    Args:
        h (Tensor): the ``(d, d)`` symmetric positive semi-definite Hessian.
        damping (float): relative dampening in (0, 1].

    Returns:
        ``(U, dead, used)``: ``U`` upper triangular float32 with ``Uᵀ U = (H + λI)⁻¹``,
        ``dead`` a ``bool`` ``(d,)`` mask of the dead inputs, and the relative dampening
        finally used.

    Example:
        >>> u, dead, used = inverse_cholesky(torch.eye(2) * 4, damping=0.0)
        >>> torch.diagonal(u).tolist(), float(u[0, 1]) == 0.0, dead.tolist(), used
        ([0.5, 0.5], True, [False, False], 0.0)
    """
    h = h.detach().to(torch.float32).clone()
    diag = torch.diagonal(h)
    dead = diag <= 0
    diag[dead] = 1.0
    mean = float(diag.mean()) if diag.numel() else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    used = damping
    for attempt in range(_MAX_TRIES):
        chol, info = torch.linalg.cholesky_ex(h + (used * mean) * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            # A NaN or inf anywhere in the factorised matrix reaches the diagonal of its
            # factor (each diagonal entry subtracts its column's squares): checking the
            # diagonal is checking U, at d instead of d² reads.
            if int(info) == 0 and bool(torch.isfinite(torch.diagonal(u)).all()):
                if attempt:
                    logger.warning("Hessian needed dampening %.3g to factorise", used)
                return u, dead, used
        used = max(used, 1e-4) * _DAMP_GROWTH
    raise ValueError(
        f"the calibration Hessian could not be factorised even with dampening {used:.3g}; "
        "the calibration data may be degenerate (e.g. constant inputs)"
    )
