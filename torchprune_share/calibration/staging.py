"""Compressed values tried on a model without committing them.

Sequential calibration records each layer's inputs with the earlier layers already
compressed, yet a failure half-way must leave the model exactly as it was. A
:class:`Staging` swaps a staged tensor in for the parameter's data (the original tensor
object is kept, so swapping back is exact and costs nothing) or, for a reparametrized
tensor, makes its parametrization return the staged value. :meth:`Staging.suspend`
shows the original model for a while (the calibration compares the outputs of both),
:meth:`Staging.restore` undoes everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..state import FOREIGN, MASKED, SHARED, TORCH_PRUNED, TensorState

__all__ = ["Staging"]


class _Entry:
    """One staged tensor: how to show its staged value and how to show the original."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name = module, name
        state = TensorState.of(module, name)
        self.parametrized = state.kind in (MASKED, SHARED, FOREIGN)
        self.hooked = state.kind == TORCH_PRUNED
        if self.parametrized:
            plist = module.parametrizations[name]
            self.target: Any = plist
            self.original: Any = plist.__dict__.get("forward")
        else:
            param = state.parameter()
            self.target, self.original = param, param.data
            if self.hooked:
                mask = getattr(module, name + "_mask")
                self.mask, self.mask_original = mask, mask.data
                self.attr_original = getattr(module, name)
        self.staged: Tensor | None = None

    def show_staged(self) -> None:
        v = self.staged
        assert v is not None
        if self.parametrized:
            self.target.forward = lambda *args, _v=v: _v
            return
        self.target.data = v
        if self.hooked:
            self.mask.data = torch.ones_like(self.mask_original)
            # torch's hook recomputes ``name`` only at the next forward.
            setattr(self.module, self.name, v)

    def show_original(self) -> None:
        if self.parametrized:
            if self.original is None:
                self.target.__dict__.pop("forward", None)
            else:
                self.target.forward = self.original
            return
        self.target.data = self.original
        if self.hooked:
            self.mask.data = self.mask_original
            setattr(self.module, self.name, self.attr_original)


class Staging:
    """Staged values of tensors of one model, undone by :meth:`restore`.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> before = lin.weight.detach().clone()
        >>> staging = Staging()
        >>> staging.stage(lin, "weight", torch.zeros(1, 2))
        >>> float(lin(torch.ones(1, 2)) - lin.bias)
        0.0
        >>> with staging.suspend():
        ...     torch.equal(lin.weight.detach(), before)
        True
        >>> staging.restore()
        >>> torch.equal(lin.weight.detach(), before)
        True
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def stage(self, module: nn.Module, name: str, value: Tensor) -> None:
        """Make ``module.<name>`` read as ``value`` (the tensor's shape) until restored.

        Args:
            module (nn.Module): the module.
            name (str): the tensor's name.
            value (Tensor): the staged value.
        """
        key = (id(module), name)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(module, name)
        ref = entry.original if not entry.parametrized else module.parametrizations[name].original
        entry.staged = value.detach().to(dtype=ref.dtype, device=ref.device)
        if not entry.parametrized:
            entry.staged = entry.staged.reshape(entry.original.shape).contiguous()
        entry.show_staged()

    @contextmanager
    def suspend(self) -> Iterator[None]:
        """Show the original tensors inside the ``with`` block, the staged ones after it."""
        for entry in self._entries.values():
            entry.show_original()
        try:
            yield
        finally:
            for entry in self._entries.values():
                entry.show_staged()

    def restore(self) -> None:
        """Undo every staged value (idempotent)."""
        for entry in reversed(list(self._entries.values())):
            entry.show_original()
        self._entries.clear()
