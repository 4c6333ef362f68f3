"""Compressed values tried on a model without committing them.

Sequential calibration records each layer's inputs with the earlier layers already
compressed, yet a failure half-way must leave the model exactly as it was. A
:class:`Staging` writes a staged value into the tensor's storage (saving the original
bitwise) or, for a reparametrized tensor, makes its parametrization return the staged
value; :meth:`Staging.restore` undoes every change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["Staging"]


class Staging:
    """Staged values of tensors of one model, undone by :meth:`restore`.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> before = lin.weight.detach().clone()
        >>> staging = Staging()
        >>> staging.stage(lin, "weight", torch.zeros(1, 2))
        >>> float(lin(torch.ones(1, 2)) - lin.bias)
        0.0
        >>> staging.restore()
        >>> torch.equal(lin.weight.detach(), before)
        True
    """

    def __init__(self) -> None:
        self._undo: list[tuple[str, Any, Any]] = []
        self._seen: set[tuple[int, str]] = set()

    def stage(self, module: nn.Module, name: str, value: Tensor) -> None:
        """Make ``module.<name>`` read as ``value`` (the tensor's shape) until restored.

        Args:
            module (nn.Module): the module.
            name (str): the tensor's name.
            value (Tensor): the staged value.
        """
        key = (id(module), name)
        with torch.no_grad():
            if parametrize.is_parametrized(module, name):
                plist = module.parametrizations[name]
                staged = value.detach().to(plist.original.dtype)
                if key not in self._seen:
                    self._undo.append(("forward", plist, plist.__dict__.get("forward")))
                plist.forward = lambda *args, _v=staged: _v
            elif hasattr(module, name + "_orig") and hasattr(module, name + "_mask"):
                orig, mask = getattr(module, name + "_orig"), getattr(module, name + "_mask")
                if key not in self._seen:
                    self._undo.append(("attr", (module, name), getattr(module, name)))
                    self._undo.append(("copy", orig, orig.detach().clone()))
                    self._undo.append(("copy", mask, mask.detach().clone()))
                orig.copy_(value)
                mask.fill_(1)
                # torch's hook recomputes ``name`` only at the next forward.
                setattr(module, name, orig * mask)
            else:
                param = getattr(module, name)
                if key not in self._seen:
                    self._undo.append(("copy", param, param.detach().clone()))
                param.copy_(value)
        self._seen.add(key)

    def restore(self) -> None:
        """Undo every staged value, newest first (idempotent)."""
        with torch.no_grad():
            for what, target, saved in reversed(self._undo):
                if what == "copy":
                    target.copy_(saved)
                elif what == "attr":
                    setattr(*target, saved)
                elif saved is None:
                    target.__dict__.pop("forward", None)
                else:
                    target.forward = saved
        self._undo.clear()
        self._seen.clear()
