"""Every reliance of this package on a torch (or Python) internal, in one place.

Each function wraps one private attribute or behaviour that torch does not document as
API. ``tests/test_compat.py`` checks each against the installed torch, so that a torch
release that changes one fails there, loudly, rather than somewhere deep in a scan.
"""

from __future__ import annotations

import copyreg
import gc
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = [
    "attach_parametrizations",
    "inject_parametrized_class",
    "is_sole_reference",
    "is_torch_default_deepcopy",
    "is_tracing",
    "parameter_owners",
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


# -- tied parameters: who else holds this Parameter? ----------------------------------
def _references_beyond_call(obj: object) -> int:
    return sys.getrefcount(obj) - _CALL_REFERENCES


def _calibrate() -> int:
    probe = object()  # one reference: this local
    return _references_beyond_call(probe) - 1


_CALL_REFERENCES = 0
_CALL_REFERENCES = _calibrate()


def is_sole_reference(module: nn.Module, key: str) -> bool:
    """Whether ``module._parameters[key]`` is referenced by that dict entry alone.

    A fast, conservative test that a parameter is tied to no other module: a tie needs a
    second dict entry, which holds a strong reference. ``sys.getrefcount`` counts every
    reference; the references of this call itself are measured once at import with the
    same call shape. Any other reference (an optimizer, a local variable of a caller)
    makes this ``False``, and callers then ask :func:`parameter_owners`.

    Args:
        module (nn.Module): the module.
        key (str): the key in ``module._parameters``.

    Example:
        >>> is_sole_reference(nn.Linear(2, 2), "weight")
        True
        >>> lin = nn.Linear(2, 2)
        >>> w = lin.weight
        >>> is_sole_reference(lin, "weight")
        False
    """
    return _references_beyond_call(module._parameters[key]) <= 1


def parameter_owners(param: Tensor, hint: nn.Module | None = None) -> list[tuple[nn.Module, str]]:
    """Every ``(module, key)`` with ``module._parameters[key] is param``, process-wide.

    A Parameter holds no reference to its modules, so a tie (``head.weight = emb.weight``)
    is found through the garbage collector's referrers: the dicts holding ``param``, and the
    modules owning those dicts as their ``_parameters``. One to three passes over the
    tracked objects (tens of ms in a large process); :func:`is_sole_reference` answers
    most calls first.

    Args:
        param (Tensor): the parameter.
        hint (nn.Module, optional): a module known to hold it: when its ``_parameters`` is
            the only dict holding ``param``, one pass suffices.

    Returns:
        ``(module, key)`` pairs, in no particular order.

    Example:
        >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> head.weight = emb.weight
        >>> sorted(type(m).__name__ for m, _ in parameter_owners(emb.weight))
        ['Embedding', 'Linear']
    """
    dicts = {
        id(r): r
        for r in gc.get_referrers(param)
        if type(r) is dict and any(v is param for v in r.values())
    }
    modules: dict[int, nn.Module] = {}
    if hint is not None and list(dicts) == [id(hint._parameters)]:
        modules[id(hint)] = hint
    elif dicts:
        instance_dicts = {}
        for obj in gc.get_referrers(*dicts.values()):
            if isinstance(obj, nn.Module) and id(obj.__dict__.get("_parameters")) in dicts:
                modules[id(obj)] = obj
            elif type(obj) is dict and id(obj.get("_parameters")) in dicts:
                instance_dicts[id(obj)] = obj
        if instance_dicts:
            for obj in gc.get_referrers(*instance_dicts.values()):
                if isinstance(obj, nn.Module) and id(obj.__dict__) in instance_dicts:
                    modules[id(obj)] = obj
    return [(m, key) for m in modules.values() for key, v in m._parameters.items() if v is param]


def inject_parametrized_class(module: nn.Module, names: list[str]) -> None:
    """Give ``module`` the class ``register_parametrization`` would: ``Parametrized<Cls>``
    with one property per name in ``names`` (``module.parametrizations`` provides them).

    torch's private ``parametrize._inject_new_class`` / ``_inject_property``, the two
    steps ``register_parametrization`` takes after moving the tensor out; used to rebuild
    an unpickled module.

    Args:
        module (nn.Module): a module of its plain class.
        names (list[str]): the tensors to give a property.

    Example:
        >>> from torch.nn.utils import parametrize
        >>> lin = nn.Linear(2, 2)
        >>> inject_parametrized_class(lin, [])
        >>> type(lin).__name__
        'ParametrizedLinear'
    """
    from torch.nn.utils import parametrize

    parametrize._inject_new_class(module)  # type: ignore[attr-defined]
    for name in names:
        parametrize._inject_property(module, name)  # type: ignore[attr-defined]


def attach_parametrizations(module: nn.Module, name: str, chain: nn.Module) -> None:
    """Make ``chain`` (another module's ``parametrizations[name]``) that of ``module`` too.

    ``module._parameters[name]`` must be ``chain.original`` (a tied parameter): it is
    removed, as ``register_parametrization`` removes it, and ``module.<name>`` becomes the
    same parametrized value as the other owner's, through the same list object.

    Args:
        module (nn.Module): the other owner of the tied parameter.
        name (str): its name in ``module``.
        chain (nn.Module): the ``ParametrizationList`` to share.

    Raises:
        ValueError: ``module.<name>`` is not ``chain.original``.

    Example:
        >>> from torch.nn.utils import parametrize
        >>> a = nn.Linear(2, 2)
        >>> b = nn.Linear(2, 2)
        >>> b.weight = a.weight
        >>> _ = parametrize.register_parametrization(a, "weight", nn.Identity())
        >>> attach_parametrizations(b, "weight", a.parametrizations.weight)
        >>> b.parametrizations.weight is a.parametrizations.weight
        True
    """
    from torch.nn.utils import parametrize

    if module._parameters.get(name) is not chain.original:
        raise ValueError(f"{name!r} of {type(module).__name__} is not the chain's original")
    del module._parameters[name]
    if not parametrize.is_parametrized(module):
        parametrize._inject_new_class(module)  # type: ignore[attr-defined]
        module.parametrizations = nn.ModuleDict()
    parametrize._inject_property(module, name)  # type: ignore[attr-defined]
    module.parametrizations[name] = chain
