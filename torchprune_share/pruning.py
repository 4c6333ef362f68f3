"""Magnitude ("level") pruning, as a parametrization (and torch's methods, re-exported).

:class:`LevelPruningMethod` (in :mod:`.prune_methods`) is a
:class:`~torch.nn.utils.prune.BasePruningMethod`. :func:`level_prune` and
:func:`global_level_prune` use the same mask computation but store the mask in a
:class:`~torchprune_share.parametrizations.PruningMask` parametrization, which composes
with weight sharing, deep-copies, and bakes with ``parametrize.remove_parametrizations``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .parametrizations import PruningMask, WeightSharing, index_dtype
from .prune_methods import (
    LevelPruningMethod,
    SigmaThresholdPruningMethod,
    amount_to_count,
    check_finite,
    level_mask,
    smallest_k,
    validate_amount,
)
from .registration import builds_state, register_tied
from .state import FOREIGN, TORCH_PRUNED, TensorState, class_name

__all__ = [
    "LevelPruningMethod",
    "SigmaThresholdPruningMethod",
    "amount_to_count",
    "global_level_prune",
    "level_prune",
    "sigma_prune",
    "smallest_k",
]


# -- reparametrization-based pruning ----------------------------------------------------


def compressible_state(module: nn.Module, name: str) -> tuple[Tensor, Tensor]:
    """The current value of ``module.<name>`` and its keep-mask, after checking it.

    Accepts a plain floating-point parameter, one reparametrized by this package, or one
    pruned with ``torch.nn.utils.prune``'s hooks.

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.

    Returns:
        ``(value, keep)``: the effective tensor (detached) and a ``bool`` mask of its
        unpruned entries.

    Raises:
        TypeError: ``module`` is no ``nn.Module``, ``name`` no ``str``, or the tensor is not
            floating-point.
        ValueError: ``name`` is no parameter of ``module``, carries a foreign
            parametrization, is empty, holds NaN/Inf, or is tied to tensors in another
            state (:meth:`~torchprune_share.state.TensorState.tie_group`).

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> value, keep = compressible_state(lin, "weight")
        >>> value.shape, bool(keep.all())
        (torch.Size([2, 3]), True)
    """
    state = TensorState.of(module, name)
    if state.kind == FOREIGN:
        raise ValueError(
            f"name={name!r}: the tensor carries a foreign parametrization; remove it "
            "(parametrize.remove_parametrizations) before compressing it"
        )
    state.tie_group()  # a tie that cannot be compressed together fails here, unchanged
    value, keep = state.value(), state.keep()
    if not value.is_floating_point():
        raise TypeError(f"name={name!r} must name a floating-point tensor, got {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"name={name!r} names an empty tensor; there is nothing to compress")
    check_finite(value, f"{class_name(module)}.{name}")
    return value, keep


def adopt_torch_pruning(module: nn.Module, name: str) -> None:
    """Turn torch's hook-based pruning of ``module.<name>`` into a plain parameter.

    The masked value becomes the parameter (``prune.remove``); callers re-create the mask
    as a parametrization. Does nothing when the tensor carries no torch pruning hook.

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> _ = torch.nn.utils.prune.l1_unstructured(lin, "weight", amount=0.5)
        >>> adopt_torch_pruning(lin, "weight")
        >>> sorted(lin.state_dict()), int((lin.weight == 0).sum())
        (['bias', 'weight'], 8)
    """
    state = TensorState.find(module, name)
    if state is not None and state.kind == TORCH_PRUNED:
        state.to_plain()


def apply_keep_mask(module: nn.Module, name: str, keep: Tensor) -> None:
    """Make ``keep`` the pruning mask of ``module.<name>``, whatever carries it now.

    A shared tensor moves its newly pruned entries to the zero code; a masked tensor
    updates its mask; a plain (or torch-pruned) one gets a :class:`PruningMask`, on every
    owner of a tied tensor. ``keep`` is trusted (callers pass a subset of the current
    keep-mask, of the tensor's shape).

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.
        keep (Tensor): ``bool``, ``False`` for the entries to prune.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> apply_keep_mask(lin, "weight", torch.tensor([[True, False], [False, True]]))
        >>> (lin.weight == 0).tolist()
        [[False, True], [True, False]]
    """
    state = TensorState.of(module, name)
    reparam = state.reparam
    with torch.no_grad():
        if isinstance(reparam, WeightSharing):
            k = reparam.num_centroids
            codes = reparam.index.to(torch.int64).masked_fill(~keep, k)
            max_code = k if bool((~keep).any()) else max(k - 1, 0)
            reparam.set_index(codes.to(index_dtype(max_code)), k)
        elif isinstance(reparam, PruningMask):
            reparam.mask.copy_(keep)
        else:
            owners = state.tie_group()
            if state.kind == TORCH_PRUNED:
                state.to_plain()
            register_tied(owners, PruningMask(keep))


@builds_state
def level_prune(
    module: nn.Module,
    name: str = "weight",
    amount: float | int | None = None,
    importance_scores: Tensor | None = None,
) -> nn.Module:
    r"""Prune ``module.<name>`` by magnitude, keeping the mask as a parametrization.

    Zeroes the ``amount`` smallest-magnitude entries among those not yet pruned, so calling
    it again prunes further (0.8 then 0.5 leaves 90 % zeros). Works on plain parameters,
    on tensors already pruned or shared by this package (shared entries move to the zero
    code), and on tensors pruned with ``torch.nn.utils.prune`` (their mask is adopted).

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): parameter name within ``module``. Default: ``"weight"``.
        amount (int or float): required, as in torch's prune functions: a float in [0, 1]
            prunes ``round(amount * n)`` of the ``n`` unpruned entries; an int prunes that
            many.
        importance_scores (Tensor, optional): scores of the tensor's shape used in place of
            its values (magnitude is taken).

    Returns:
        ``module``, pruned in place.

    Raises:
        TypeError: ``amount`` is missing or no number; ``module``/``name`` of a wrong type.
        ValueError: ``amount`` out of range, or a tensor that cannot be pruned.

    Example:
        >>> lin = nn.Linear(100, 10)
        >>> _ = level_prune(lin, "weight", amount=0.8)
        >>> int((lin.weight == 0).sum())
        800
    """
    if amount is None:
        raise TypeError(
            "amount must be a float in [0, 1] or a non-negative int, and is required (as in "
            "torch.nn.utils.prune): level_prune(module, name, amount), got NoneType"
        )
    validate_amount(amount)
    value, keep = compressible_state(module, name)
    scores = value
    if importance_scores is not None:
        if not isinstance(importance_scores, Tensor):
            raise TypeError(
                f"importance_scores must be a tensor of shape {tuple(value.shape)}, got "
                f"{type(importance_scores).__name__}"
            )
        if importance_scores.shape != value.shape:
            raise ValueError(
                f"importance_scores must be a tensor of shape {tuple(value.shape)}, got "
                f"{getattr(importance_scores, 'shape', type(importance_scores).__name__)}"
            )
        check_finite(importance_scores, "importance_scores")
        scores = importance_scores
    new_keep = level_mask(scores, keep, amount)
    apply_keep_mask(module, name, new_keep)
    return module


@builds_state
def global_level_prune(
    parameters: Iterable[tuple[nn.Module, str]],
    amount: float | int,
    importance_scores: dict[tuple[nn.Module, str], Tensor] | None = None,
) -> None:
    r"""Prune several tensors with one magnitude threshold across all of them.

    The counterpart of ``prune.global_unstructured(..., pruning_method=L1Unstructured)``
    that keeps masks as parametrizations (see :func:`level_prune`).

    Args:
        parameters (Iterable of (module, name)): the tensors to prune together.
        amount (int or float): fraction (float in [0, 1]) or count (int) of all their
            unpruned entries to prune.
        importance_scores (dict, optional): maps ``(module, name)`` to a score tensor used in
            place of the values.

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
        >>> global_level_prune([(net[0], "weight"), (net[1], "weight")], amount=0.5)
        >>> int((net[0].weight == 0).sum() + (net[1].weight == 0).sum())
        100
    """
    validate_amount(amount)
    targets: Sequence[tuple[nn.Module, str]] = list(parameters)
    if not targets:
        raise ValueError("parameters must name at least one (module, name) pair")
    seen: set[tuple[int, str]] = set()
    for pair in targets:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"parameters must hold (module, name) pairs, got {pair!r}")
        key = (id(pair[0]), pair[1])
        if key in seen:
            raise ValueError(f"parameters names ({type(pair[0]).__name__}, {pair[1]!r}) twice")
        seen.add(key)
    if importance_scores is not None and not isinstance(importance_scores, dict):
        raise TypeError(
            "importance_scores must be a dict mapping (module, name) to a tensor, got "
            f"{type(importance_scores).__name__}"
        )
    states = [compressible_state(m, n) for m, n in targets]
    check_untied(targets)
    scores = []
    work_dtype = (
        torch.float64 if any(v.dtype == torch.float64 for v, _ in states) else torch.float32
    )
    for (m, n), (value, _) in zip(targets, states):
        s = value
        if importance_scores is not None and (m, n) in importance_scores:
            s = importance_scores[(m, n)]
            if not isinstance(s, Tensor):
                raise TypeError(
                    f"importance_scores for {n!r} must be a tensor, got {type(s).__name__}"
                )
            if s.shape != value.shape:
                raise ValueError(
                    f"importance_scores for {n!r} must be a tensor of shape "
                    f"{tuple(value.shape)}, got {getattr(s, 'shape', type(s).__name__)}"
                )
            check_finite(s, f"importance_scores for {n!r}")
        scores.append(s.detach().abs().reshape(-1).to(device=value.device, dtype=work_dtype))
    keep = torch.cat([k.reshape(-1) for _, k in states])
    new_keep = level_mask(torch.cat(scores), keep, amount)
    offset = 0
    for (m, n), (value, _) in zip(targets, states):
        part = new_keep[offset : offset + value.numel()].view(value.shape)
        offset += value.numel()
        apply_keep_mask(m, n, part)


def check_untied(targets: Sequence[tuple[nn.Module, str]]) -> None:
    """Raise ``ValueError`` when two of ``targets`` are one tied tensor (counted twice).

    Args:
        targets (Sequence of (module, name)): the tensors of one global pruning.

    Example:
        >>> emb, head = nn.Embedding(4, 2), nn.Linear(2, 4, bias=False)
        >>> head.weight = emb.weight
        >>> check_untied([(emb, "weight"), (head, "weight")])
        Traceback (most recent call last):
        ...
        ValueError: parameters names Embedding.weight and Linear.weight, which are one tied tensor; name it once
    """
    seen: dict[int, tuple[nn.Module, str]] = {}
    for m, n in targets:
        param = TensorState.of(m, n).parameter()
        first = seen.setdefault(id(param), (m, n))
        if first != (m, n):
            raise ValueError(
                f"parameters names {class_name(first[0])}.{first[1]} and {class_name(m)}.{n}, "
                "which are one tied tensor; name it once"
            )


@builds_state
def sigma_prune(module: nn.Module, name: str = "weight", q: float = 1.0) -> nn.Module:
    r"""Prune entries of ``module.<name>`` below ``q`` standard deviations, as a parametrization.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): parameter name. Default: ``"weight"``.
        q (float): threshold in units of the standard deviation of the unpruned entries.

    Returns:
        ``module``, pruned in place.

    Example:
        >>> lin = nn.Linear(100, 100)
        >>> _ = sigma_prune(lin, "weight", q=0.5)
        >>> 0.2 < float((lin.weight == 0).float().mean()) < 0.5
        True
    """
    method = SigmaThresholdPruningMethod(q)
    value, keep = compressible_state(module, name)
    new_keep = method.compute_mask(value, keep.to(value.dtype)) != 0
    apply_keep_mask(module, name, new_keep)
    return module
