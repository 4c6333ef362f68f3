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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .layout import Layout, build_layout
from .source import UnsupportedWeight, weight_parts

__all__ = [
    "BACKENDS",
    "CompressedConv1d",
    "CompressedConv2d",
    "CompressedLinear",
    "conv_settings",
    "propagate_nonfinite",
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


def _refuse_backward(x: Tensor, y: Tensor, what: str) -> Tensor:
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


class _Compressed(nn.Module):
    """A weight ``(rows, K)`` held in one backend, with the checks every layer shares."""

    def __init__(self, layout: Layout, bias: Tensor | None, backend: str) -> None:
        super().__init__()
        self.out_features, self.in_features = layout.rows, layout.cols_total
        self.nnz = layout.nnz
        self.decoder = layout.decoder
        self.stride_lut = layout.stride
        self.backend = _effective_backend(backend)
        self.layer_name = ""
        b = None if bias is None else bias.detach().to(torch.float32).cpu().clone()
        self.register_buffer("bias", b)
        if self.backend == "kernel":
            for key in ("rowptr", "cols", "payload", "lut"):
                self.register_buffer(
                    key, torch.from_numpy(np.ascontiguousarray(getattr(layout, key)))
                )
        else:
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

    @property
    def code_bits(self) -> int | None:
        """Width of a stored code (4 for packed nibbles), ``None`` without a codebook."""
        return {"nibble": 4, "value": None}.get(
            self.decoder, 8 if self.payload_itemsize == 1 else 16
        )

    @property
    def payload_itemsize(self) -> int:
        payload = self._buffers.get("payload")
        return 4 if payload is None else payload.element_size()

    def extra_repr(self) -> str:
        density = self.nnz / max(self.out_features * self.in_features, 1)
        if self.decoder == "value":
            what = "float32 values"
        else:
            what = f"{self.code_bits}-bit codes, {'per-row' if self.stride_lut else 'per-tensor'} codebook"
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

    def _bias_np(self) -> np.ndarray:
        if self.bias is None:
            return np.zeros(self.out_features, np.float32)
        return self.bias.to(torch.float32).numpy()

    def _parts(self) -> tuple:
        lut = self.lut if self.lut.dtype == torch.float32 else self.lut.float()
        payload = self.payload
        if self.decoder == "value" and payload.dtype != torch.float32:
            payload = payload.float()
        return (
            self.decoder,
            self.rowptr.numpy(),
            self.cols.numpy(),
            payload.numpy(),
            lut.numpy(),
            self.stride_lut,
        )

    def structure(self) -> tuple[np.ndarray, np.ndarray]:
        """Row pointers and columns of the kept entries (for NaN/Inf propagation)."""
        if self.backend == "kernel":
            return self.rowptr.numpy(), self.cols.numpy()
        w = self.weight_csr if self.backend == "csr" else None
        return w.crow_indices().numpy(), w.col_indices().numpy()

    @torch.compiler.disable
    def matmul_t(self, xt: Tensor) -> Tensor:
        """``W @ xt + bias[:, None]`` for ``xt`` of shape ``(K, M)`` (float32)."""
        m = xt.shape[1]
        if self.backend == "csr":
            y = torch.sparse.mm(self.weight_csr, xt)
            if self.bias is not None:
                y = y + self.bias[:, None]
        else:
            xt_np = xt.detach().contiguous().numpy()
            y = torch.empty(self.out_features, m, dtype=torch.float32)
            kernels.sparse_matmul(
                self._parts(),
                xt_np,
                self._bias_np(),
                y.numpy(),
                x_transposed=True,
                out_transposed=True,
                threads=torch.get_num_threads(),
            )
        bad = ~torch.isfinite(xt)
        if bool(bad.any()):
            rowptr, cols = self.structure()
            y_np = y.detach().numpy()
            propagate_nonfinite(bad.t().numpy(), rowptr, cols, y_np.T)
        return y

    @torch.compiler.disable
    def matmul(self, x: Tensor) -> Tensor:
        """``x @ Wᵀ + bias`` for ``x`` of shape ``(M, K)`` (float32, contiguous)."""
        if self.backend == "dense":
            return F.linear(x, self.weight_dense, self.bias)
        if self.backend == "csr":
            y = torch.sparse.mm(self.weight_csr, x.t()).t()
            if self.bias is not None:
                y = y + self.bias
        else:
            y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
            kernels.sparse_matmul(
                self._parts(),
                x.detach().numpy(),
                self._bias_np(),
                y.numpy(),
                threads=torch.get_num_threads(),
            )
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            rowptr, cols = self.structure()
            y = y.contiguous()
            propagate_nonfinite(bad.numpy(), rowptr, cols, y.detach().numpy())
        return y


def _layout_of(module: nn.Module) -> Layout:
    parts = weight_parts(module, "weight")
    return build_layout(
        parts.out_features,
        parts.in_features,
        parts.positions,
        parts.codes,
        parts.codebook,
        parts.values,
    )


def _bias_of(module: nn.Module) -> Tensor | None:
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, Tensor) else None


class CompressedLinear(_Compressed):
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
        return cls(_layout_of(linear), _bias_of(linear), backend)

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
        self._check_input(x, self.in_features, "last")
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, self.in_features).to(torch.float32).contiguous()
        if x2.shape[0] == 0:
            y = x2.new_zeros(0, self.out_features)
        else:
            y = self.matmul(x2)
        y = y.reshape(*lead, self.out_features).to(x.dtype)
        return _refuse_backward(x, y, self._what())


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def conv_settings(conv: nn.Module) -> dict[str, tuple[int, ...]]:
    """The unfolding settings of an ``nn.Conv1d``/``nn.Conv2d`` the modules support.

    Raises:
        UnsupportedWeight: grouped convolutions, non-zero padding modes, string padding
            other than ``"valid"``, or another kind of module.

    Example:
        >>> conv_settings(nn.Conv2d(1, 2, 3, padding=1))["padding"]
        (1, 1)
    """
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
        raise UnsupportedWeight(f"{type(conv).__name__} is no Conv1d/Conv2d")
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise UnsupportedWeight("grouped convolutions and padding modes other than zeros")
    padding = conv.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise UnsupportedWeight(f"padding={padding!r}")
        padding = (0,) * len(conv.kernel_size)
    return {
        "kernel_size": tuple(conv.kernel_size),
        "stride": tuple(conv.stride),
        "padding": tuple(padding),
        "dilation": tuple(conv.dilation),
    }


class CompressedConv2d(_Compressed):
    r"""A compressed ``nn.Conv2d`` (``groups=1``) computed by unfolding its input.

    The weight ``(out, in, kh, kw)`` is held flattened to ``(out, in * kh * kw)``; each
    sample's patches (``F.unfold``) are its batch, read in the layout the kernels want.

    Args:
        layout (Layout): the flattened weight.
        bias (Tensor, optional): ``(out_channels,)``.
        backend (str): ``"kernel"``, ``"csr"`` or ``"dense"``.
        in_channels (int), kernel_size, stride, padding, dilation: as for ``nn.Conv2d``.

    Example:
        >>> from torchprune_share import level_prune
        >>> conv = nn.Conv2d(3, 8, 3, padding=1)
        >>> _ = level_prune(conv, amount=0.8)
        >>> fast = CompressedConv2d.from_conv(conv)
        >>> x = torch.randn(2, 3, 10, 10)
        >>> bool((fast(x) - conv(x)).abs().max() < 1e-5)
        True
    """

    spatial = 2

    def __init__(
        self,
        layout: Layout,
        bias: Tensor | None = None,
        backend: str = "kernel",
        *,
        in_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...] = (1, 1),
        padding: tuple[int, ...] = (0, 0),
        dilation: tuple[int, ...] = (1, 1),
    ) -> None:
        super().__init__(layout, bias, backend)
        self.in_channels = int(in_channels)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)

    @classmethod
    def from_conv(cls, conv: nn.Module, backend: str = "kernel") -> CompressedConv2d:
        """Build from a shared, pruned, torch-pruned or plain convolution of this kind."""
        settings = conv_settings(conv)
        if len(settings["kernel_size"]) != cls.spatial:
            raise UnsupportedWeight(f"{cls.__name__} needs a {cls.spatial}-d convolution")
        return cls(
            _layout_of(conv), _bias_of(conv), backend, in_channels=conv.in_channels, **settings
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_features}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, " + super().extra_repr()
        )

    def _unfold_args(self) -> dict[str, tuple[int, int]]:
        if self.spatial == 2:
            keys = ("kernel_size", "dilation", "padding", "stride")
            return {k: _pair(getattr(self, k)) for k in keys}
        return {
            "kernel_size": (1, self.kernel_size[0]),
            "dilation": (1, self.dilation[0]),
            "padding": (0, self.padding[0]),
            "stride": (1, self.stride[0]),
        }

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and x.dim() not in (self.spatial + 1, self.spatial + 2):
            raise ValueError(
                f"{self._what()}: expected a {self.spatial + 2}-d (or unbatched "
                f"{self.spatial + 1}-d) input, got shape {tuple(x.shape)}"
            )
        unbatched = isinstance(x, Tensor) and x.dim() == self.spatial + 1
        xb = x.unsqueeze(0) if unbatched else x
        self._check_input(xb, self.in_channels, "channels")
        x32 = xb.detach().to(torch.float32)
        if self.backend == "dense":
            weight = self.weight_dense.view(self.out_features, self.in_channels, *self.kernel_size)
            conv = F.conv2d if self.spatial == 2 else F.conv1d
            y = conv(x32, weight, self.bias, self.stride, self.padding, self.dilation)
        else:
            y = self._unfolded(x32)
        y = (y.squeeze(0) if unbatched else y).to(x.dtype)
        return _refuse_backward(x, y, self._what())

    def _unfolded(self, x32: Tensor) -> Tensor:
        args = self._unfold_args()
        x4 = x32 if self.spatial == 2 else x32.unsqueeze(2)
        n, _, h, w = x4.shape
        out_hw = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, d, p, s in zip(
                (h, w), args["kernel_size"], args["dilation"], args["padding"], args["stride"]
            )
        ]
        if n == 0 or out_hw[0] <= 0 or out_hw[1] <= 0:
            y = x32.new_zeros(n, self.out_features, max(out_hw[0], 0), max(out_hw[1], 0))
        else:
            cols = F.unfold(x4, **args)
            y = torch.stack([self.matmul_t(cols[i]) for i in range(n)])
            y = y.view(n, self.out_features, *out_hw)
        return y if self.spatial == 2 else y.squeeze(2)


class CompressedConv1d(CompressedConv2d):
    r"""A compressed ``nn.Conv1d`` (``groups=1``), unfolded as a ``1 x k`` 2-d convolution.

    Example:
        >>> from torchprune_share import register_weight_sharing
        >>> conv = nn.Conv1d(4, 6, 5, stride=2)
        >>> _ = register_weight_sharing(conv, bits=3)
        >>> fast = CompressedConv1d.from_conv(conv)
        >>> x = torch.randn(3, 4, 20)
        >>> bool((fast(x) - conv(x)).abs().max() < 1e-5)
        True
    """

    spatial = 1
