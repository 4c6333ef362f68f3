"""Every reliance of this package on a torch (or Python) internal, in one place.

Each function wraps one private attribute or behaviour that torch does not document as
API. ``tests/test_compat.py`` checks each against the installed torch, so that a torch
release that changes one fails there, loudly, rather than somewhere deep in a scan.
"""

from __future__ import annotations

import copyreg
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = [
    "is_torch_default_deepcopy",
    "is_tracing",
    "prune_hook",
    "prune_hooks",
    "slot_names",
    "tensor_version",
]


def prune_hooks(module: nn.Module) -> dict[str, prune.BasePruningMethod]:
    """The ``torch.nn.utils.prune`` methods on ``module``, by the tensor name they prune.

    torch keeps them among the module's forward pre-hooks (``module._forward_pre_hooks``)
    and records the tensor in the method's ``_tensor_name``; neither is public.

    Args:
        module (nn.Module): the module.

    Returns:
        ``{name: method}`` (a ``PruningContainer`` when a tensor was pruned twice).

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> _ = prune.l1_unstructured(lin, "weight", amount=0.5)
        >>> list(prune_hooks(lin))
        ['weight']
    """
    return {
        hook._tensor_name: hook
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    }


def prune_hook(module: nn.Module, name: str) -> prune.BasePruningMethod | None:
    """The ``torch.nn.utils.prune`` method pruning ``module.<name>``, or ``None``.

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.

    Example:
        >>> prune_hook(nn.Linear(2, 2), "weight") is None
        True
    """
    return prune_hooks(module).get(name)


def is_torch_default_deepcopy(cls: type) -> bool:
    """Whether ``cls.__deepcopy__`` is the one ``parametrize`` injects into its classes.

    ``torch.nn.utils.parametrize`` gives each parametrized module a class of its own
    (``ParametrizedLinear``) and, when the module's class has no ``__deepcopy__``, a
    default one whose ``__qualname__`` ends in ``default_deepcopy``.

    Args:
        cls (type): the parametrized module's class.

    Example:
        >>> from torch.nn.utils import parametrize
        >>> lin = nn.Linear(2, 2)
        >>> _ = parametrize.register_parametrization(lin, "weight", nn.Identity())
        >>> is_torch_default_deepcopy(type(lin))
        True
    """
    method = cls.__dict__.get("__deepcopy__")
    return getattr(method, "__qualname__", "").endswith("default_deepcopy")


def slot_names(cls: type) -> list[str]:
    """The ``__slots__`` names of ``cls`` and its bases, as ``copy``/``pickle`` see them.

    Example:
        >>> slot_names(nn.Linear)
        []
    """
    return copyreg._slotnames(cls)  # type: ignore[attr-defined]


def tensor_version(tensor: Tensor) -> int:
    """The in-place modification counter of ``tensor`` (torch's ``_version``).

    Every in-place write (``copy_``, ``fill_``, an optimizer step) increments it: a cache
    derived from the tensor is stale when it changed.

    Args:
        tensor (Tensor): the tensor.

    Example:
        >>> t = torch.zeros(2)
        >>> before = tensor_version(t)
        >>> _ = t.add_(1)
        >>> tensor_version(t) > before
        True
    """
    return tensor._version


# WeightSharing overrides nn.Module._load_from_state_dict (torch's documented extension
# point for custom state loading), with this signature; tests/test_compat.py checks it.
LOAD_FROM_STATE_DICT_ARGS = (
    "state_dict",
    "prefix",
    "local_metadata",
    "strict",
    "missing_keys",
    "unexpected_keys",
    "error_msgs",
)


def is_tracing(tensor: Tensor | None = None) -> bool:
    """Whether the code runs under a tracer or compiler, or ``tensor`` is a fake tensor.

    True under ``torch.compile`` / ``torch.export`` (dynamo and non-strict export),
    ``torch.jit`` tracing or scripting, and for a ``FakeTensor`` or a functorch-wrapped
    tensor. A Python-side cache keyed by ``data_ptr()`` must not be used then: such
    tensors have no storage, and a cached tensor would be baked into the graph.

    Args:
        tensor (Tensor, optional): a tensor the caller is about to read.

    Example:
        >>> is_tracing(torch.zeros(2))
        False
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    if tensor is None:
        return False
    return _is_fake(tensor) or torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def _is_fake(tensor: Any) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return bool(is_fake(tensor))
