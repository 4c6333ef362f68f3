"""Compressed convolutions: ``nn.Conv2d`` / ``nn.Conv1d`` computed by unfolding.

Each sample's patches (``F.unfold``) are the batch of one sparse matrix product, read
straight in the transposed layout the kernels want (one input feature per row), and the
product lands in the ``(out_channels, positions)`` layout of the convolution's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layout import Layout
from .modules import CompressedModule, bias_of, layout_of, refuse_backward
from .source import UnsupportedWeight

__all__ = ["CompressedConv1d", "CompressedConv2d", "conv_settings"]


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


class CompressedConv2d(CompressedModule):
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
            layout_of(conv), bias_of(conv), backend, in_channels=conv.in_channels, **settings
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
        return refuse_backward(x, y, self._what())

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
            y = torch.stack([self.matmul(cols[i], transposed=True) for i in range(n)])
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
