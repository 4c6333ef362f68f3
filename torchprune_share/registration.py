"""Registering this package's parametrizations: ties, deep copies, pickling, safe loads.

:func:`register` is ``parametrize.register_parametrization`` plus what torch leaves out:

* a deep copy gets a parametrized class of its own (torch's default shares it, so baking
  the copy would break the original);
* ``pickle`` and ``torch.save(model)`` work (:func:`reduce_parametrized`; torch's
  parametrized classes refuse ``__getstate__``);
* torch's ``load_state_dict`` checks a :class:`~torchprune_share.WeightSharing`'s entries
  before copying any (:func:`check_sharing_entries`).

:func:`register_tied` registers one parametrization on every owner of a tied tensor
(``head.weight = emb.weight``): all owners share one ``ParametrizationList``.

:func:`builds_state` marks every public call that builds or changes state in a
model: that state is never made of inference tensors, nor computed under autocast.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from .compat import (
    attach_parametrizations,
    inject_parametrized_class,
    is_torch_default_deepcopy,
    slot_names,
)
from .parametrizations import WeightSharing

__all__ = [
    "builds_state",
    "check_sharing_entries",
    "own_class_hooks",
    "rebuild_parametrized",
    "reduce_parametrized",
    "register",
    "register_tied",
]


F = TypeVar("F", bound=Callable[..., Any])


def builds_state(fn: F) -> F:
    """``fn``, a call that builds or changes a model's state, shielded from the caller's
    inference mode and autocast.

    What this package builds in a model (masks, codebooks, indices, baked or loaded
    weights) outlives the call. Built under a caller's ``torch.inference_mode()`` (a
    common wrapper around calibration) they would be inference tensors, and the model
    could never again run a forward that autograd records: "Inference tensors cannot be
    saved for backward" (torch's own ``prune`` has that defect). So inference mode is off
    inside, unless the model's own weights are inference tensors (built under inference
    mode: it cannot train anyway, and torch updates such tensors in place only in
    inference mode). Under ``torch.autocast`` the numeric core's products (``H``, the
    sweeps, the refits) would run in half precision, or fail on mixed dtypes: autocast is
    off inside too. Inference tensors the caller passes in (calibration batches, scores)
    are read as usual.

    Args:
        fn (Callable): a function or method that changes a model, given as an argument
            (a module, ``(module, name)`` pairs, or an object with a ``model``).

    Returns:
        The wrapped ``fn`` (same name, docstring and signature).

    Example:
        >>> @builds_state
        ... def make(model):
        ...     return torch.ones(2, 2) @ torch.ones(2, 2)
        >>> net = nn.Linear(2, 2)
        >>> with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ...     out = make(net)
        >>> out.is_inference(), out.dtype
        (False, torch.float32)
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device in _AUTOCAST_DEVICES:
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            inference = torch.is_inference_mode_enabled()
            if inference and not _holds_inference_tensors((*args, *kwargs.values())):
                stack.enter_context(torch.inference_mode(False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


_AUTOCAST_DEVICES = ("cpu", "cuda")


def _holds_inference_tensors(args: tuple[Any, ...]) -> bool:
    """Whether a module among ``args`` (or their ``model``, or in their pairs) holds an
    inference tensor."""
    modules = []
    for arg in args:
        if isinstance(arg, nn.Module):
            modules.append(arg)
        elif isinstance(getattr(arg, "model", None), nn.Module):
            modules.append(arg.model)
        elif isinstance(arg, (list, tuple)):
            for item in arg:
                parts = item if isinstance(item, (list, tuple)) else (item,)
                modules.extend(p for p in parts if isinstance(p, nn.Module))
    return any(
        t.is_inference() for m in modules for t in itertools.chain(m.parameters(), m.buffers())
    )


def _deepcopy_with_own_class(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``__deepcopy__`` of a parametrized module whose copy gets a class of its own.

    ``parametrize`` injects one class per module (``ParametrizedLinear``) that carries a
    property per parametrized tensor, and its default ``__deepcopy__`` gives the copy that
    same class. Registering or removing a parametrization on either module then adds or
    deletes the property on both: ``bake(copy.deepcopy(model))`` would break ``model``.
    """
    replica = memo.get(id(self))
    if replica is not None:
        return replica
    cls = type(self)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    replica = self.__new__(type(cls.__name__, cls.__bases__, namespace))
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    for slot in slot_names(cls):
        if hasattr(self, slot):
            setattr(replica, slot, copy.deepcopy(getattr(self, slot), memo))
    return replica


def check_sharing_entries(
    chain: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """``load_state_dict`` pre-hook of a parametrization chain holding a :class:`WeightSharing`.

    Runs before the chain copies its ``original`` (the codebook): when the incoming entries
    do not fit (:meth:`WeightSharing.check_state_dict`), none of them is copied, and the
    problem is reported (torch's ``load_state_dict`` then raises).

    Args:
        chain (nn.Module): the ``ParametrizationList`` (``module.parametrizations[name]``).
        state_dict (dict): the entries being loaded (this load's own copy).
        prefix (str): the chain's key prefix, e.g. ``"fc.parametrizations.weight."``.
        local_metadata, strict, missing_keys, unexpected_keys: as torch passes them.
        error_msgs (list[str]): where the problem is reported.

    Example:
        >>> a, b = nn.Linear(4, 4), nn.Linear(4, 4)
        >>> ws = WeightSharing(torch.zeros(4, 4, dtype=torch.uint8), torch.zeros(1), bits=1)
        >>> register(a, "weight", ws)  # registers this hook
        >>> register(b, "weight", WeightSharing(torch.ones(4, 4, dtype=torch.uint8),
        ...                                     torch.ones(2), bits=1))
        >>> a.load_state_dict(b.state_dict())
        Traceback (most recent call last):
        ...
        RuntimeError: Error(s) in loading state_dict for ParametrizedLinear:
            parametrizations.weight: the checkpoint's codebook has 2 centroids per_tensor, ...
        >>> bool((a.weight == 0).all())
        True
    """
    for i, p in enumerate(chain):
        if isinstance(p, WeightSharing):
            problem = p.check_state_dict(state_dict, f"{prefix}{i}.")
            if problem is not None:
                # Load the current values instead (a bitwise no-op), so that only this
                # problem is reported, not missing keys.
                current = {
                    "original": chain.original.detach(),
                    f"{i}.index": p.index,
                    f"{i}._extra_state": p.get_extra_state(),
                }
                for key, value in current.items():
                    if prefix + key in state_dict:
                        state_dict[prefix + key] = value
                error_msgs.append(f"{prefix[:-1]}: {problem}")


def register(module: nn.Module, name: str, reparam: nn.Module, *, unsafe: bool = False) -> None:
    """``parametrize.register_parametrization``, with deep copies that do not share the class.

    A :class:`WeightSharing` also gets its entries checked before torch's
    ``load_state_dict`` copies any of them (:func:`check_sharing_entries`), so a failed
    load leaves the module as it was.

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.
        reparam (nn.Module): the parametrization.
        unsafe (bool): as in ``register_parametrization`` (skip its consistency checks).

    Example:
        >>> from torchprune_share.parametrizations import PruningMask
        >>> lin = nn.Linear(2, 2)
        >>> register(lin, "weight", PruningMask(torch.ones(2, 2, dtype=torch.bool)))
        >>> type(copy.deepcopy(lin)) is not type(lin)
        True
    """
    parametrize.register_parametrization(module, name, reparam, unsafe=unsafe)
    if isinstance(reparam, WeightSharing):
        module.parametrizations[name].register_load_state_dict_pre_hook(check_sharing_entries)
    own_class_hooks(module)


def own_class_hooks(module: nn.Module) -> None:
    """Give the parametrized class of ``module`` this package's deepcopy and pickling.

    Args:
        module (nn.Module): a module parametrized by ``torch.nn.utils.parametrize``.

    Example:
        >>> from torchprune_share.parametrizations import PruningMask
        >>> lin = nn.Linear(2, 2)
        >>> register(lin, "weight", PruningMask(torch.ones(2, 2, dtype=torch.bool)))
        >>> type(lin).__reduce_ex__ is reduce_parametrized
        True
    """
    cls = type(module)
    # Only replace torch's default (injected when the module's own class has none).
    if is_torch_default_deepcopy(cls):
        cls.__deepcopy__ = _deepcopy_with_own_class
    cls.__reduce_ex__ = reduce_parametrized


def register_tied(
    owners: list[tuple[nn.Module, str]], reparam: nn.Module, *, unsafe: bool = False
) -> None:
    """:func:`register` on every owner of one tied tensor, all sharing one parametrization.

    The first owner gets ``reparam`` registered; every other one gets the very same
    ``ParametrizationList`` (same ``original``, same ``reparam``), so each owner computes
    the same tensor, an optimizer updates it once, and anything appended to the chain
    applies to all. ``reparam.tied`` records the owners (bake removes them all).

    Args:
        owners (list of (module, name)): every holder of the tensor's Parameter, first the
            one the caller named; all plain.
        reparam (nn.Module): a :class:`PruningMask` or :class:`WeightSharing`.
        unsafe (bool): as in :func:`register`.

    Example:
        >>> from torchprune_share.parametrizations import PruningMask
        >>> emb, head = nn.Embedding(4, 2), nn.Linear(2, 4, bias=False)
        >>> head.weight = emb.weight
        >>> register_tied([(emb, "weight"), (head, "weight")],
        ...               PruningMask(torch.ones(4, 2, dtype=torch.bool)))
        >>> head.parametrizations.weight is emb.parametrizations.weight
        True
    """
    (module, name), rest = owners[0], owners[1:]
    register(module, name, reparam, unsafe=unsafe)
    chain = module.parametrizations[name]
    for other, other_name in rest:
        attach_parametrizations(other, other_name, chain)
        own_class_hooks(other)
    reparam.tied = list(owners) if rest else []


def reduce_parametrized(self: nn.Module, protocol: int) -> tuple:
    """``__reduce_ex__`` of a parametrized module: pickle and ``torch.save(model)`` work.

    torch's parametrized classes are created at run time (not importable) and refuse
    ``__getstate__``; this pickles the module's plain state (its ``parametrizations``
    included) with the class it had before, and :func:`rebuild_parametrized` re-creates
    the parametrized class on load. Tied owners and shared Parameters stay shared (pickle
    memoizes them), and ``torch.save`` stores each storage once.

    Args:
        self (nn.Module): the parametrized module.
        protocol (int): the pickle protocol (unused; the state is protocol-independent).

    Returns:
        ``(rebuild_parametrized, (base class, parametrized names), state)``.

    Example:
        >>> from torchprune_share.parametrizations import PruningMask
        >>> import pickle
        >>> lin = nn.Linear(2, 2)
        >>> register(lin, "weight", PruningMask(torch.tensor([[True, False], [True, True]])))
        >>> copy_ = pickle.loads(pickle.dumps(lin))
        >>> type(copy_).__name__, torch.equal(copy_.weight, lin.weight)
        ('ParametrizedLinear', True)
    """
    base = parametrize.type_before_parametrizations(self)
    state = base.__getstate__(self)
    names = list(self.parametrizations) if parametrize.is_parametrized(self) else []
    return rebuild_parametrized, (base, names), state


def rebuild_parametrized(base: type, names: list[str]) -> nn.Module:
    """An empty instance of the parametrized class of ``base`` (pickle then sets its state).

    Args:
        base (type): the module's class before parametrization (``nn.Linear``).
        names (list[str]): the parametrized tensors, one property each.

    Returns:
        The instance, with no state yet.

    Example:
        >>> type(rebuild_parametrized(nn.Linear, ["weight"])).__name__
        'ParametrizedLinear'
    """
    module = base.__new__(base)
    inject_parametrized_class(module, names)
    own_class_hooks(module)
    return module
