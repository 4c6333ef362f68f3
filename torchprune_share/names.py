"""Tensor names: qualified names, the reparametrization key patterns, ``"*"``, resolution.

A *qualified name* is a module path and a tensor name joined by a dot
(``"features.0.weight"``; ``"weight"`` for a tensor of the model itself). A compressed
tensor keeps its user-facing qualified name although its ``state_dict`` keys differ:
``fc1.parametrizations.weight.original`` / ``fc1.parametrizations.weight.0.<buffer>``
(a parametrization) or ``fc1.weight_orig`` / ``fc1.weight_mask`` (a torch pruning hook).
``"*"`` stands for the default tensors, :func:`default_parameter_names`.
"""

from __future__ import annotations

import re

from torch import nn
from torch.nn.utils import parametrize

from .compat import prune_hook, prune_hooks
from .state import TensorState

__all__ = [
    "DEFAULT",
    "HOOK_KEY",
    "ORIGINAL_KEY",
    "REPARAM_KEY",
    "default_parameter_names",
    "dense_name",
    "expand_default_names",
    "join",
    "named_tensors",
    "reparam_base",
    "resolve_tensor",
    "split",
]

DEFAULT = "*"
# A state_dict key under a parametrization: prefix "fc1.", name "weight", rest "original",
# "0.index", "0._extra_state", ...
REPARAM_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.(?P<rest>.+)$")
# The tensor a parametrization stores (``original``, or ``original0``.. for several).
ORIGINAL_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.original\d*$")
# A key of torch's pruning hooks: "fc1.weight_orig" / "fc1.weight_mask".
HOOK_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<name>[^.]+)_(?P<kind>orig|mask)$")


def join(prefix: str, name: str) -> str:
    """``prefix.name``, or ``name`` alone for the model's own tensors.

    Args:
        prefix (str): the module path (``""`` for the model itself).
        name (str): the tensor's name in that module.

    Example:
        >>> join("fc1", "weight"), join("", "weight")
        ('fc1.weight', 'weight')
    """
    return f"{prefix}.{name}" if prefix else name


def split(qualified: str) -> tuple[str, str]:
    """``(module path, tensor name)`` of a qualified name (the inverse of :func:`join`).

    Args:
        qualified (str): e.g. ``"features.0.weight"``.

    Example:
        >>> split("features.0.weight"), split("weight")
        (('features.0', 'weight'), ('', 'weight'))
    """
    prefix, _, name = qualified.rpartition(".")
    return prefix, name


def reparam_base(qualified: str) -> str:
    """The key prefix of the parametrization of a tensor: ``fc1.parametrizations.weight``.

    Args:
        qualified (str): the tensor's qualified name.

    Example:
        >>> reparam_base("fc1.weight"), reparam_base("gain")
        ('fc1.parametrizations.weight', 'parametrizations.gain')
    """
    prefix, name = split(qualified)
    return join(prefix, f"parametrizations.{name}")


def dense_name(key: str) -> str:
    """The qualified name of the tensor a ``state_dict`` key belongs to.

    Args:
        key (str): a ``state_dict`` key (reparametrization, pruning hook or plain).

    Example:
        >>> dense_name("a.parametrizations.w.0.index"), dense_name("a.w_mask"), dense_name("a.b")
        ('a.w', 'a.w', 'a.b')
    """
    m = REPARAM_KEY.match(key)
    if m:
        return m["prefix"] + m["name"]
    m = HOOK_KEY.match(key)
    return m["prefix"] + m["name"] if m else key


def named_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """List the model's parameters under their user-facing names, in module order.

    A reparametrized ``fc1.weight`` (``fc1.parametrizations.weight.original``) and a
    ``torch.nn.utils.prune``-pruned one (``fc1.weight_orig``) are both listed as
    ``"fc1.weight"``; within a module such tensors come first (as weights do in
    ``nn.Linear``), so the order does not change when a model is compressed. Tied
    parameters appear once.

    Args:
        model (nn.Module): the model.

    Returns:
        ``(qualified_name, module, name)`` tuples.

    Example:
        >>> from torchprune_share import level_prune
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> _ = level_prune(net[0], "weight", amount=0.5)
        >>> [q for q, _, _ in named_tensors(net)]
        ['0.weight', '0.bias']
    """
    out, seen, skip = [], set(), set()
    for mod_name, module in model.named_modules():
        if id(module) in skip:
            continue
        compressed, plain = [], []
        if parametrize.is_parametrized(module):
            skip.update(id(m) for m in module.parametrizations.modules())
            for name, chain in module.parametrizations.items():
                compressed.append((name, getattr(chain, "original", None)))
        hooked = prune_hooks(module)
        for pname, param in module.named_parameters(recurse=False, remove_duplicate=False):
            base = pname[: -len("_orig")]
            if pname.endswith("_orig") and base in hooked:
                compressed.append((base, param))
            else:
                plain.append((pname, param))
        for name, tensor in compressed + plain:
            key = id(tensor) if tensor is not None else (id(module), name)
            if key in seen:
                continue
            seen.add(key)
            out.append((join(mod_name, name), module, name))
    return out


def resolve_tensor(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    """Resolve a user-facing tensor name such as ``"fc1.weight"`` to ``(module, name)``.

    Also accepts the internal names ``"fc1.parametrizations.weight.original"`` and
    ``"fc1.weight_orig"``.

    Args:
        model (nn.Module): the model.
        qualified (str): module path and tensor name, joined by a dot.

    Returns:
        ``(module, name)`` with ``getattr(module, name)`` the tensor.

    Raises:
        TypeError: ``qualified`` is no ``str``.
        ValueError: if the model has no such floating-point tensor.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> resolve_tensor(net, "0.weight")[1]
        'weight'
    """
    if not isinstance(qualified, str):
        raise TypeError(f"a tensor name must be a str, got {type(qualified).__name__}")
    m = ORIGINAL_KEY.match(qualified)
    if m:
        qualified = m["prefix"] + m["name"]
    prefix, name = split(qualified)
    try:
        module = model.get_submodule(prefix) if prefix else model
    except AttributeError:
        raise ValueError(f"{qualified!r}: the model has no module {prefix!r}") from None
    if name.endswith("_orig") and prune_hook(module, name[: -len("_orig")]) is not None:
        name = name[: -len("_orig")]
    state = TensorState.find(module, name)
    if state is None:
        raise ValueError(
            f"{qualified!r}: {type(module).__name__} has no parameter {name!r}; expected one of "
            f"{sorted(q for q, _, _ in named_tensors(module))}"
        )
    if not state.dtype.is_floating_point:
        raise ValueError(f"{qualified!r} is not a floating-point tensor")
    return module, name


def default_parameter_names(model: nn.Module) -> list[str]:
    """The tensors scanned and compressed by default: every floating-point weight of dim >= 2.

    Shapes are those of the effective tensors (a shared weight counts with its own shape,
    not its codebook's), so convolution and linear weights are in, biases and norms out.

    Args:
        model (nn.Module): the model.

    Returns:
        User-facing names in ``named_parameters`` order.

    Example:
        >>> default_parameter_names(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)))
        ['0.weight']
    """
    names = []
    for qualified, module, name in named_tensors(model):
        state = TensorState.of(module, name)
        if state.dtype.is_floating_point and len(state.shape) >= 2:
            names.append(qualified)
    return names


def expand_default_names(model: nn.Module, names: list[str]) -> list[str]:
    """Replace ``"*"`` by the default tensors that are not named explicitly.

    Args:
        model (nn.Module): the model.
        names (list[str]): qualified names, ``"*"`` at most once.

    Returns:
        The names with ``"*"`` replaced in place.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        >>> expand_default_names(net, ["1.bias", "*"])
        ['1.bias', '0.weight', '1.weight']
    """
    if DEFAULT not in names:
        return names
    i = names.index(DEFAULT)
    explicit = set(names[:i] + names[i + 1 :])
    defaults = [q for q in default_parameter_names(model) if q not in explicit]
    return names[:i] + defaults + names[i + 1 :]
