"""Inference modules that compute straight from the compressed layout.

:class:`CompressedLinear`, :class:`CompressedConv2d` and :class:`CompressedConv1d` hold a
weight in one of three forms, their *backend*:

* ``"kernel"``: this package's layout (:mod:`~torchprune_share.inference.layout`) and the
  numba kernels: row pointers, narrow column indices, packed codes and the codebook;
* ``"csr"``: a ``torch.sparse_csr`` tensor (``float32`` values, ``int64`` indices);
* ``"dense"``: the plain ``float32`` weight.

:func:`~torchprune_share.to_inference` picks the fastest per layer. Without numba a
``"kernel"`` module is built as ``"csr"`` instead (one log line), never wrong.

All three compute in ``float32``: other floating inputs (``float16``, ``bfloat16``,
``float64``) are cast, and the output is cast back to the input's dtype; integer inputs
raise ``TypeError``. Non-contiguous inputs are copied. NaN and Inf propagate as in the
dense layer (``0 * inf`` is NaN there, so a pruned entry facing an infinite input makes
its output NaN here too). The modules are for inference only: ``backward`` through them
raises ``RuntimeError``; train the parametrized model and convert again.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .layout import Layout, build_layout
from .source import weight_parts

__all__ = [
    "BACKENDS",
    "CompressedLinear",
    "CompressedModule",
    "bias_of",
    "layout_of",
    "propagate_nonfinite",
    "refuse_backward",
]

logger = logging.getLogger(__name__)

BACKENDS = ("kernel", "csr", "dense")
_warned_no_numba = False


def _effective_backend(backend: str) -> str:
    global _warned_no_numba
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "kernel" and not kernels.AVAILABLE:
        if not _warned_no_numba:
            logger.warning("numba is not installed: compressed layers run on torch CSR instead")
            _warned_no_numba = True
        return "csr"
    return backend


class _InferenceOnly(torch.autograd.Function):
    """Identity on the forward whose backward refuses, naming the layer."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, what: str) -> Tensor:
        ctx.what = what
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, None]:
        raise RuntimeError(
            f"{ctx.what} is an inference module and has no backward; train the compressed "
            "model in its parametrized form and call to_inference again"
        )


def refuse_backward(x: Tensor, y: Tensor, what: str) -> Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _InferenceOnly.apply(x, y, what)
    return y


def propagate_nonfinite(bad: np.ndarray, rowptr: np.ndarray, cols: np.ndarray, y: np.ndarray):
    """Set ``y[b, r]`` to NaN where dense would multiply a pruned zero by a NaN or Inf.

    Args:
        bad (np.ndarray): ``bool`` ``(M, K)``, True where the input is not finite.
        rowptr, cols (np.ndarray): the kept entries' row pointers and columns.
        y (np.ndarray): ``(M, rows)`` output (a view may be strided), changed in place.

    Example:
        >>> y = np.zeros((1, 2), np.float32)
        >>> propagate_nonfinite(np.array([[True, False]]), np.array([0, 1, 1]), np.array([0]), y)
        >>> y.tolist()
        [[0.0, nan]]
    """
    starts, ends = rowptr[:-1].astype(np.int64), rowptr[1:].astype(np.int64)
    for b in np.flatnonzero(bad.any(axis=1)):
        hit = np.concatenate([[0], np.cumsum(bad[b][cols.astype(np.int64)])])
        # Row r stores every non-finite column only if it holds all of them.
        missing = (hit[ends] - hit[starts]) < int(bad[b].sum())
        y[b, missing] = np.nan


class CompressedModule(nn.Module):
    """A weight ``(rows, K)`` held in one backend, with the checks every layer shares."""

    def __init__(self, layout: Layout, bias: Tensor | None, backend: str) -> None:
        super().__init__()
        self.out_features, self.in_features = layout.rows, layout.cols_total
        self.nnz = layout.nnz
        self.decoder = layout.decoder
        self.stride_lut = layout.stride
        self.backend = _effective_backend(backend)
        self.layer_name = ""
        k = layout.lut.size // (layout.rows if layout.stride else 1)
        self.code_bits = None if layout.decoder == "value" else max(1, (k - 1).bit_length())
        self._parts_key: tuple | None = None
        self._parts_cache: tuple = ()
        b = None if bias is None else bias.detach().to(torch.float32).cpu().clone()
        self.register_buffer("bias", b)
        if self.backend == "kernel":
            for key in ("rowptr", "cols", "payload", "lut"):
                self.register_buffer(
                    key, torch.from_numpy(np.ascontiguousarray(getattr(layout, key)))
                )
        else:
            with warnings.catch_warnings():  # "sparse CSR support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                csr = torch.sparse_csr_tensor(
                    torch.from_numpy(layout.rowptr.astype(np.int64)),
                    torch.from_numpy(layout.cols.astype(np.int64)),
                    torch.from_numpy(np.ascontiguousarray(layout.values(), dtype=np.float32)),
                    size=(layout.rows, layout.cols_total),
                )
            if self.backend == "csr":
                self.register_buffer("weight_csr", csr)
            else:
                self.register_buffer("weight_dense", csr.to_dense())

    # -- what the layer holds -------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the layer holds (layout, CSR or dense weight, and bias)."""
        total = 0
        for t in self.buffers():
            if t.layout == torch.sparse_csr:
                parts = (t.crow_indices(), t.col_indices(), t.values())
                total += sum(p.numel() * p.element_size() for p in parts)
            else:
                total += t.numel() * t.element_size()
        return total

    def extra_repr(self) -> str:
        density = self.nnz / max(self.out_features * self.in_features, 1)
        if self.code_bits is None:
            what = "float32 values"
        else:
            scope = "per-row" if self.stride_lut else "per-tensor"
            what = f"{self.code_bits}-bit codes, {scope} codebook"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"backend={self.backend!r}, density={density:.3f}, {what}, "
            f"bias={self.bias is not None}, bytes={self.nbytes}"
        )

    def _what(self) -> str:
        return f"{type(self).__name__}{f' {self.layer_name!r}' if self.layer_name else ''}"

    def _check_input(self, x: object, width: int, dim_name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._what()}: input must be a Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{self._what()}: input must be floating point (cast to float32), got {x.dtype}"
            )
        if x.dim() == 0 or x.shape[-1 if dim_name == "last" else 1] != width:
            where = "last dimension" if dim_name == "last" else "dimension 1 (channels)"
            raise ValueError(
                f"{self._what()}: expected input with {width} in its {where}, got shape "
                f"{tuple(x.shape)}"
            )

    # -- computing ----------------------------------------------------------------------
    def _parts(self) -> tuple:
        bufs = [self._buffers[k] for k in ("rowptr", "cols", "payload", "lut", "bias")]
        key = tuple((t.data_ptr(), t.dtype) if t is not None else None for t in bufs)
        if self._parts_key != key:
            rowptr, cols, payload, lut, bias = bufs
            if self.decoder == "value":
                payload = payload.float()
            bias = torch.zeros(self.out_features) if bias is None else bias.float()
            kernel_parts = (
                self.decoder,
                rowptr.numpy(),
                cols.numpy(),
                payload.numpy(),
                lut.float().numpy(),
                self.stride_lut,
            )
            self._parts_cache, self._parts_key = (kernel_parts, bias.numpy()), key
        return self._parts_cache

    def _matvec(self, x: Tensor) -> Tensor:
        """``x Wᵀ + b`` for one contiguous ``float32`` row ``(1, K)``, without a grad."""
        (decoder, *layout), bias = self._parts()
        y = torch.empty(1, self.out_features)
        xv = x.detach().numpy()[0]
        if kernels.KERNELS[decoder]["matvec_finite"](*layout, xv, bias, y.numpy()[0]):
            return y
        return self._propagate(x, y, False)

    @torch.compiler.disable
    def _kernel_product(self, x: Tensor, transposed: bool) -> tuple[Tensor, bool]:
        # numba reads numpy views of the tensors: torch.compile must not trace this.
        parts, bias = self._parts()
        threads = torch.get_num_threads()
        xn = x.numpy()
        if transposed:  # x (K, M) -> (rows, M)
            y = torch.empty(self.out_features, x.shape[1])
            kernels.sparse_matmul(parts, xn, bias, y.numpy(), threads=threads)
        else:  # x (M, K) -> (M, rows)
            y = torch.empty(x.shape[0], self.out_features)
            kernels.sparse_matmul(parts, xn.T, bias, y.numpy().T, threads=threads)
        return y, bool(np.isfinite(xn.sum()))

    def structure(self) -> tuple[np.ndarray, np.ndarray]:
        """Row pointers and columns of the kept entries (``kernel`` and ``csr`` backends)."""
        if self.backend == "kernel":
            return self.rowptr.numpy(), self.cols.numpy()
        return self.weight_csr.crow_indices().numpy(), self.weight_csr.col_indices().numpy()

    @torch.compiler.disable
    def _propagate(self, x: Tensor, y: Tensor, transposed: bool) -> Tensor:
        bad = ~torch.isfinite(x)
        if not bool(bad.any()):
            return y  # the sum overflowed, no input is infinite
        y = y.clone()
        rowptr, cols = self.structure()
        bad_np, y_np = bad.numpy(), y.numpy()
        if transposed:
            bad_np, y_np = bad_np.T, y_np.T
        propagate_nonfinite(bad_np, rowptr, cols, y_np)
        return y

    def matmul(self, x: Tensor, transposed: bool = False) -> Tensor:
        """``x Wᵀ + b`` for float32 ``x`` ``(M, K)``; ``W x + b[:, None]`` for ``(K, M)``
        when ``transposed`` (then the result is ``(rows, M)``)."""
        if self.backend == "dense":
            if transposed:
                return F.linear(x.t(), self.weight_dense, self.bias).t()
            return F.linear(x, self.weight_dense, self.bias)
        if self.backend == "csr":
            y = torch.sparse.mm(self.weight_csr, x if transposed else x.t())
            if self.bias is not None:
                y = y + self.bias[:, None]
            y = y if transposed else y.t()
            finite = bool(torch.isfinite(x.sum()))
        else:
            y, finite = self._kernel_product(x, transposed)
        # Dense multiplies pruned zeros by the input too (0 * inf = NaN): one sum tells
        # whether any input is not finite, and only then are the rows found.
        return y if finite else self._propagate(x, y, transposed)


def layout_of(module: nn.Module) -> Layout:
    """The :class:`Layout` of ``module.weight``, read through :func:`weight_parts`."""
    parts = weight_parts(module, "weight")
    return build_layout(
        parts.out_features,
        parts.in_features,
        parts.positions,
        parts.codes,
        parts.codebook,
        parts.values,
    )


def bias_of(module: nn.Module) -> Tensor | None:
    """``module.bias`` detached, or ``None``."""
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, Tensor) else None


class CompressedLinear(CompressedModule):
    r"""``y = x Wᵀ + b`` computed from a compressed weight, for inference.

    Build it with :meth:`from_linear` (from a pruned and/or shared ``nn.Linear``), with
    :meth:`from_parts` (from a file's kept positions, codes and codebook, without a dense
    weight), or through :func:`~torchprune_share.to_inference`.

    Args:
        layout (Layout): the weight (see :func:`~torchprune_share.inference.layout.build_layout`).
        bias (Tensor, optional): ``(out_features,)``.
        backend (str): ``"kernel"`` (default), ``"csr"`` or ``"dense"``.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> lin = nn.Linear(64, 32)
        >>> _ = level_prune(lin, amount=0.9)
        >>> _ = register_weight_sharing(lin, bits=4)
        >>> fast = CompressedLinear.from_linear(lin)
        >>> x = torch.randn(5, 64)
        >>> bool((fast(x) - lin(x)).abs().max() < 1e-5), fast.nbytes < 32 * 64 * 4 // 8
        (True, True)
    """

    def __init__(self, layout: Layout, bias: Tensor | None = None, backend: str = "kernel"):
        super().__init__(layout, bias, backend)

    @classmethod
    def from_linear(cls, linear: nn.Module, backend: str = "kernel") -> CompressedLinear:
        """Build from an ``nn.Linear`` that is shared, pruned, torch-pruned or plain.

        Raises:
            UnsupportedWeight: its weight carries a foreign parametrization.
        """
        return cls(layout_of(linear), bias_of(linear), backend)

    @classmethod
    def from_parts(
        cls,
        out_features: int,
        in_features: int,
        kept: np.ndarray | Tensor,
        codes: np.ndarray | None = None,
        codebook: Tensor | None = None,
        values: np.ndarray | Tensor | None = None,
        bias: Tensor | None = None,
        *,
        backend: str = "kernel",
    ) -> CompressedLinear:
        """Build from the natural parts of a compressed file, without a dense weight.

        Args:
            out_features (int), in_features (int): the weight's shape.
            kept: ``int64`` row-major positions of the kept entries, or a ``bool`` bitmap.
            codes (np.ndarray, optional): one code per kept entry (``uint8``/``uint16``/
                ``int32``), with ``codebook`` ``(k,)`` or ``(out_features, k)``.
            values (optional): one float per kept entry instead (no codebook).
            bias (Tensor, optional): ``(out_features,)``.
            backend (str): as for the constructor. Default: ``"kernel"``.

        Example:
            >>> m = CompressedLinear.from_parts(2, 3, np.array([0, 5]), np.array([0, 1]),
            ...                                 torch.tensor([0.5, -2.0]))
            >>> m(torch.ones(1, 3))
            tensor([[ 0.5000, -2.0000]])
        """
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        layout = build_layout(out_features, in_features, kept, codes, codebook, values)
        return cls(layout, bias, backend)

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.dtype == torch.float32
            and x.dim() >= 1
            and x.shape[-1] == self.in_features
            and not (torch.is_grad_enabled() and x.requires_grad)
        ):
            if self.backend == "dense":
                # The dense choice costs what nn.Linear costs: the checks below add ~15 us
                # a call, more than a small layer's product.
                return F.linear(x, self.weight_dense, self.bias)
            if (
                self.backend == "kernel"
                and x.dim() == 2
                and x.shape[0] == 1
                and x.is_contiguous()
                and (self.nnz < kernels.PARALLEL_MIN_WORK or torch.get_num_threads() == 1)
                and not torch.compiler.is_compiling()
            ):
                # Batch 1, the latency case: the general path below costs ~0.2 ms a call
                # when the previous layer has flushed the caches, 15 % of a 4096 x 4096
                # layer's time.
                return self._matvec(x)
        self._check_input(x, self.in_features, "last")
        x2 = x.detach()
        if x2.dim() != 2:
            x2 = x2.reshape(-1, self.in_features)
        if x2.dtype != torch.float32:
            x2 = x2.to(torch.float32)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        if x2.shape[0] == 0:
            y = x2.new_zeros(0, self.out_features)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = self.matmul(x2)
        if x.dim() != 2:
            y = y.reshape(*x.shape[:-1], self.out_features)
        if x.dtype != torch.float32:
            y = y.to(x.dtype)
        return refuse_backward(x, y, self._what())
