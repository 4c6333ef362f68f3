"""Baking compressed tensors into plain ones, and loading compressed checkpoints.

A ``state_dict`` of a compressed model has keys such as
``fc1.parametrizations.weight.original`` (the codebook) and
``fc1.parametrizations.weight.0.index``, which a freshly built model lacks.
:func:`load_state_dict` re-creates the reparametrizations from those keys first, so the
checkpoint loads with ``strict=True`` semantics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from .compat import prune_hook, prune_hooks
from .config import SharingConfig
from .names import HOOK_KEY, REPARAM_KEY, dense_name, join, reparam_base
from .parametrizations import (
    PruningMask,
    WeightSharing,
    get_reparametrization,
    index_dtype,
)
from .registration import builds_state, register_tied
from .state import TensorState, describe_owners

__all__ = [
    "CheckpointError",
    "bake",
    "compressed_tensors",
    "load_state_dict",
    "owned_keys",
    "torch_pruned_tensors",
]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into (a ``ValueError``).

    The message names the offending tensor (its qualified name, e.g. ``'fc1.weight'``) or
    lists the missing and unexpected keys.

    Example:
        >>> try:
        ...     load_state_dict(nn.Linear(2, 2), {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
        ... except CheckpointError as err:
        ...     print(err)
        tensor 'weight': shape mismatch, model has (2, 2), checkpoint (3, 2)
    """


def compressed_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """List every tensor of ``model`` reparametrized by this package.

    Args:
        model (nn.Module): the model.

    Returns:
        ``(qualified_name, module, name, parametrization)`` tuples in module order, e.g.
        ``("fc1.weight", model.fc1, "weight", <WeightSharing>)``.

    Example:
        >>> from torchprune_share import level_prune
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> _ = level_prune(net[0], amount=0.5)
        >>> [q for q, *_ in compressed_tensors(net)]
        ['0.weight']
    """
    found = []
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations):
            reparam = get_reparametrization(module, name)
            if reparam is not None:
                found.append((join(mod_name, name), module, name, reparam))
    return found


def torch_pruned_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """List every tensor of ``model`` pruned by a ``torch.nn.utils.prune`` forward pre-hook.

    Args:
        model (nn.Module): the model.

    Returns:
        ``(qualified_name, module, name)`` tuples in module order.

    Example:
        >>> from torch.nn.utils import prune
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> _ = prune.l1_unstructured(net[0], "weight", amount=0.5)
        >>> [q for q, *_ in torch_pruned_tensors(net)]
        ['0.weight']
    """
    return [
        (join(mod_name, name), module, name)
        for mod_name, module in model.named_modules()
        for name in prune_hooks(module)
    ]


def owned_keys(model: nn.Module) -> dict[str, str]:
    """Map each ``state_dict`` key of a pruned or shared tensor to the tensor's dense name.

    Keys under this package's parametrizations (``fc.parametrizations.weight.original``,
    ``...0.index``, ``...0._extra_state``, ``...0.mask``) and torch's pruning hooks
    (``fc.bias_orig``, ``fc.bias_mask``); plain keys are absent.

    Args:
        model (nn.Module): the model.

    Returns:
        ``{key: qualified_name}``.

    Raises:
        ValueError: a compressed tensor is tied to another owner (the file format stores
            no ties yet; the message names the routes that do).

    Example:
        >>> from torchprune_share import level_prune
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> owned_keys(level_prune(net[0], amount=0.5) and net)
        {'0.parametrizations.weight.original': '0.weight', '0.parametrizations.weight.0.mask': '0.weight'}
    """
    found = compressed_tensors(model)
    for q, module, name, _ in found:
        owners = TensorState.of(module, name).owners()
        if len(owners) > 1:
            raise ValueError(
                f"tensor {q!r} is tied ({describe_owners(owners)}); the .tpsc format has no "
                "record for a tied tensor yet: save model.state_dict() (load it with "
                "torchprune_share.load_state_dict) or torch.save(model)"
            )
    bases = {reparam_base(q) + ".": q for q, *_ in found}
    owner = {}
    for key in model.state_dict():
        m = REPARAM_KEY.match(key)
        if m:
            base = f"{m['prefix']}parametrizations.{m['name']}."
            if base in bases:
                owner[key] = bases[base]
    for q, *_ in torch_pruned_tensors(model):
        owner[q + "_orig"] = owner[q + "_mask"] = q
    return owner


@builds_state
def bake(model: nn.Module) -> nn.Module:
    r"""Replace every compressed tensor of ``model`` by a plain ``nn.Parameter`` of its value.

    Removes this package's parametrizations (``parametrize.remove_parametrizations`` with
    ``leave_parametrized=True``) and torch's pruning hooks (``prune.remove``); the values
    are bitwise those the model computed. Stale ``.grad`` tensors of the baked parameters
    are cleared; build a new optimizer afterwards.

    Args:
        model (nn.Module): the model, changed in place.

    Returns:
        ``model``.

    Example:
        >>> from torchprune_share import register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(8, 8))
        >>> _ = register_weight_sharing(net[0], bits=2)
        >>> before = net[0].weight.detach().clone()
        >>> _ = bake(net)
        >>> type(net[0].weight) is nn.Parameter and torch.equal(net[0].weight, before)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for _, module, name, _ in compressed_tensors(model):
        TensorState.of(module, name).to_plain()
        getattr(module, name).grad = None
    for _, module, name in torch_pruned_tensors(model):
        TensorState.of(module, name).to_plain()
        getattr(module, name).grad = None
    return model


@dataclass
class _Entry:
    prefix: str
    name: str
    kind: str = ""
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return self.prefix + self.name


def _group(state_dict: Mapping[str, object]) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for key in state_dict:
        m = REPARAM_KEY.match(key)
        if m:
            e = entries.setdefault(m["prefix"] + m["name"], _Entry(m["prefix"], m["name"]))
            e.keys[m["rest"]] = key
            continue
        m = HOOK_KEY.match(key)
        if (
            m
            and (m["prefix"] + m["name"] + ("_mask" if m["kind"] == "orig" else "_orig"))
            in state_dict
        ):
            e = entries.setdefault(m["prefix"] + m["name"], _Entry(m["prefix"], m["name"], "hook"))
            e.keys[m["kind"]] = key
    for q, e in entries.items():
        if e.kind == "hook":
            continue
        rest = set(e.keys)
        if rest == {"original", "0.mask"}:
            e.kind = "mask"
        elif rest == {"original", "0.index", "0._extra_state"}:
            e.kind = "sharing"
        else:
            raise CheckpointError(
                f"tensor {q!r}: unrecognised reparametrization keys {sorted(e.keys.values())}"
            )
    return entries


def sharing_state(q: str, extra: object, dim: int) -> tuple[SharingConfig, int]:
    """The config and centroid count of a checkpoint's sharing state, validated.

    Args:
        q (str): the tensor's qualified name, for messages.
        extra (object): the ``..._extra_state`` entry: the tensor of
            :meth:`SharingConfig.to_state`, or the dict of settings 0.1.0 wrote.
        dim (int): the dense tensor's number of dimensions.

    Returns:
        ``(config, num_centroids)``.

    Raises:
        CheckpointError: naming ``q``, for any malformed or out-of-range setting.

    Example:
        >>> sharing_state("fc.weight", SharingConfig(bits=2).to_state(4), 2)[1]
        4
        >>> sharing_state("fc.weight", SharingConfig(bits=2).to_state(5), 2)
        Traceback (most recent call last):
        ...
        torchprune_share.checkpoint.CheckpointError: tensor 'fc.weight': malformed sharing settings: num_centroids must be an int in [0, 2**bits = 4], got 5
    """
    try:
        config, k = SharingConfig.from_state(extra)
        config.check_tensor(dim)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"tensor {q!r}: malformed sharing settings: {err}") from None
    return config, k


def _check_entry(model: nn.Module, e: _Entry, sd: Mapping[str, Tensor]) -> nn.Module:
    q = e.qualified
    try:
        module = model.get_submodule(e.prefix[:-1]) if e.prefix else model
    except AttributeError as err:
        raise CheckpointError(f"tensor {q!r}: the model has no module {e.prefix[:-1]!r}") from err
    state = TensorState.find(module, e.name)
    shape = state.shape if state is not None else None
    if shape is None:
        cls = parametrize.type_before_parametrizations(module).__name__
        raise CheckpointError(f"tensor {q!r}: {cls} has no parameter {e.name!r}")
    for rest, key in e.keys.items():
        if rest != "0._extra_state" and not isinstance(sd[key], Tensor):  # 0.1.0: a dict
            raise CheckpointError(
                f"tensor {q!r}: {key!r} must be a tensor, got {type(sd[key]).__name__}"
            )
    if e.kind == "hook":
        orig, mask = sd[e.keys["orig"]], sd[e.keys["mask"]]
        bad = [(k, t.shape) for k, t in (("orig", orig), ("mask", mask)) if t.shape != shape]
    elif e.kind == "mask":
        bad = [
            (k, sd[e.keys[k]].shape) for k in ("original", "0.mask") if sd[e.keys[k]].shape != shape
        ]
    else:
        index, codebook = sd[e.keys["0.index"]], sd[e.keys["original"]]
        config, k = sharing_state(q, sd[e.keys["0._extra_state"]], len(shape))
        bad = [] if index.shape == shape else [("index", index.shape)]
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise CheckpointError(
                f"tensor {q!r}: index must be an integer tensor, got {index.dtype}"
            )
        if not codebook.is_floating_point():
            raise CheckpointError(
                f"tensor {q!r}: codebook must be a floating-point tensor, got {codebook.dtype}"
            )
        want = (k,) if config.granularity == "per_tensor" else (shape[config.channel_axis], k)
        if tuple(codebook.shape) != want:
            bad.append(("codebook", codebook.shape))
        if index.numel() and (int(index.min()) < 0 or int(index.max()) > k):
            raise CheckpointError(f"tensor {q!r}: index codes must lie in [0, {k}]")
    if bad:
        got = ", ".join(f"{k} {tuple(s)}" for k, s in bad)
        raise CheckpointError(
            f"tensor {q!r}: shape mismatch, model has {tuple(shape)}, checkpoint {got}"
        )
    return module


def _check_keys(
    model: nn.Module, entries: dict[str, _Entry], state_dict: Mapping[str, Tensor]
) -> None:
    """Raise unless the checkpoint has exactly the keys (and plain shapes) the model will have."""
    # Keys the model will have once the checkpoint's reparametrizations exist.
    current = model.state_dict()
    now = {q for q, *_ in compressed_tensors(model)} | {q for q, *_ in torch_pruned_tensors(model)}
    plain = {k: t for k, t in current.items() if dense_name(k) not in now and k not in entries}
    expected_keys = set(plain) | (now - set(entries))
    for e in entries.values():
        expected_keys |= set(e.keys.values())
    given = set(state_dict)
    missing, unexpected = sorted(expected_keys - given), sorted(given - expected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the model: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    if now - set(entries):
        raise CheckpointError(
            f"the model compresses {sorted(now - set(entries))}, which the checkpoint stores "
            "plain; load into a freshly built model"
        )
    for key, want in plain.items():
        got = state_dict[key]
        if isinstance(want, Tensor) and not isinstance(got, Tensor):
            raise CheckpointError(f"tensor {key!r}: expected a tensor, got {type(got).__name__}")
        if isinstance(want, Tensor) and isinstance(got, Tensor) and want.shape != got.shape:
            raise CheckpointError(
                f"tensor {key!r}: shape mismatch, model has {tuple(want.shape)}, "
                f"checkpoint {tuple(got.shape)}"
            )


def _same_entry(a: _Entry, b: _Entry, sd: Mapping[str, object], dim: int) -> bool:
    if a.kind != b.kind or set(a.keys) != set(b.keys):
        return False
    for rest, key in a.keys.items():
        x, y = sd[key], sd[b.keys[rest]]
        if rest == "0._extra_state":
            if sharing_state(a.qualified, x, dim) != sharing_state(b.qualified, y, dim):
                return False
        elif not (x is y or (x.dtype == y.dtype and torch.equal(x, y))):  # type: ignore[union-attr]
            return False
    return True


def tie_groups(
    model: nn.Module,
    entries: dict[str, _Entry],
    modules: dict[str, nn.Module],
    state_dict: Mapping[str, object],
) -> dict[str, list[tuple[nn.Module, str]]]:
    """The owners each compressed entry is re-created on; tied followers map to ``[]``.

    A tensor tied in ``model`` (``head.weight = emb.weight``) is compressed once for all
    its owners, so the checkpoint must store every owner in the model the same way (a
    ``state_dict`` of a tied model does: one set of keys per owner, equal values).

    Args:
        model (nn.Module): the model being loaded into (not yet changed).
        entries (dict): the checkpoint's compressed tensors, by qualified name.
        modules (dict): the module of each entry.
        state_dict (Mapping): the checkpoint.

    Returns:
        ``{qualified name: owners}``; ``[]`` for an owner whose tie leader re-creates it.

    Raises:
        CheckpointError: naming the tied tensors, when the checkpoint stores them
            differently, plain, or pruned by torch's hooks.

    Example:
        >>> from torchprune_share import register_weight_sharing
        >>> emb, head = nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)
        >>> head.weight = emb.weight
        >>> net = nn.ModuleDict({"emb": emb, "head": head})
        >>> _ = register_weight_sharing(net["emb"], bits=2)
        >>> fresh = nn.ModuleDict({"emb": nn.Embedding(6, 4), "head": nn.Linear(4, 6, bias=False)})
        >>> fresh["head"].weight = fresh["emb"].weight
        >>> _ = load_state_dict(fresh, net.state_dict())
        >>> fresh["head"].parametrizations.weight is fresh["emb"].parametrizations.weight
        True
    """
    where: dict[tuple[int, str], str] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name in [*module._parameters, *getattr(module, "parametrizations", {})]:
            where.setdefault((id(module), name), join(prefix, name))
    groups: dict[str, list[tuple[nn.Module, str]]] = {}
    for q, e in entries.items():
        if q in groups:
            continue
        owners = TensorState.of(modules[q], e.name).owners()
        groups[q] = owners
        names = [where.get((id(m), n)) for m, n in owners[1:]]
        if not names:
            continue
        dim = len(TensorState.of(modules[q], e.name).shape)
        for other in names:
            if other is None:  # an owner outside this model: it follows
                continue
            f = entries.get(other)
            if e.kind == "hook" or f is None or not _same_entry(e, f, state_dict, dim):
                raise CheckpointError(
                    f"tensor {q!r} is tied to {other!r} in the model "
                    f"({describe_owners(owners)}), but the checkpoint stores them "
                    "differently (one compressed, one plain, other values, or torch "
                    "pruning hooks); a tied tensor is compressed once for all its owners"
                )
            groups[other] = []
    return groups


def _recreate(
    module: nn.Module,
    e: _Entry,
    state_dict: Mapping[str, Tensor],
    owners: list[tuple[nn.Module, str]],
) -> None:
    """Give ``module.<e.name>`` (and its tied ``owners``) the checkpoint's reparametrization."""
    TensorState.of(module, e.name).to_plain()
    device = getattr(module, e.name).device
    if e.kind == "hook":
        prune.custom_from_mask(module, e.name, state_dict[e.keys["mask"]].to(device))
    elif e.kind == "mask":
        register_tied(owners, PruningMask(state_dict[e.keys["0.mask"]].to(device)))
    else:
        dim = getattr(module, e.name).dim()
        config, k = sharing_state(e.qualified, state_dict[e.keys["0._extra_state"]], dim)
        codebook = state_dict[e.keys["original"]]
        index = state_dict[e.keys["0.index"]]
        if index.dtype not in (torch.uint8, torch.int32):
            # e.g. int16 from another writer: DDP cannot broadcast it (index_dtype).
            index = index.to(index_dtype(k))
        sharing = WeightSharing(
            index.to(device).clone(),
            codebook.to(device=device, dtype=getattr(module, e.name).dtype).clone(),
            config=config,
        )
        register_tied(owners, sharing, unsafe=True)


def _without_inference_tensors(state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """``state_dict`` with normal copies of its inference tensors (``torch.load`` under
    ``torch.inference_mode()`` makes them): the re-created masks and indices take the
    checkpoint's tensors, and torch cannot update an inference tensor in place outside
    inference mode. torch's version ``_metadata`` is kept."""
    if not any(isinstance(v, Tensor) and v.is_inference() for v in state_dict.values()):
        return state_dict
    out = OrderedDict(
        (k, v.clone() if isinstance(v, Tensor) and v.is_inference() else v)
        for k, v in state_dict.items()
    )
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


@builds_state
def load_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    r"""Load a checkpoint of a compressed model into a (fresh) model of the same architecture.

    Re-creates the pruning masks, weight sharing and ``torch.nn.utils.prune`` hooks named
    by the checkpoint's keys, then loads it with ``strict=True``: outputs equal the saved
    model's bitwise from the first forward on. Everything is checked before anything
    changes; on a mismatch a :class:`CheckpointError` names the tensor and ``model`` is
    left as it was.

    Args:
        model (nn.Module): the model to load into (changed in place).
        state_dict (Mapping[str, Tensor]): e.g. ``torch.load(path, weights_only=True)``.

    Returns:
        ``model``.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(8, 8))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.5), bits=2)
        >>> fresh = load_state_dict(nn.Sequential(nn.Linear(8, 8)), net.state_dict())
        >>> torch.equal(fresh[0].weight, net[0].weight)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}"
        )
    state_dict = _without_inference_tensors(state_dict)
    entries = _group(state_dict)
    modules = {q: _check_entry(model, e, state_dict) for q, e in entries.items()}
    _check_keys(model, entries, state_dict)
    groups = tie_groups(model, entries, modules, state_dict)
    with torch.no_grad():
        for q, e in entries.items():
            if groups[q]:  # a tied follower got its leader's reparametrization
                _recreate(modules[q], e, state_dict, groups[q])
    model.load_state_dict(state_dict, strict=True)
    # A torch pruning hook recomputes ``module.<name>`` only at the next forward; refresh it
    # now so that no stale tensor is visible before the first forward.
    for q, e in entries.items():
        if e.kind == "hook":
            hook = prune_hook(modules[q], e.name)
            setattr(modules[q], e.name, hook.apply_mask(modules[q]))
    return model
