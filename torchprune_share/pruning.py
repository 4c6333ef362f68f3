"""Magnitude ("level") pruning, as a ``torch.nn.utils.prune`` method and as a parametrization.

:class:`LevelPruningMethod` is a :class:`~torch.nn.utils.prune.BasePruningMethod`, so it
works wherever torch takes a method (``apply``, ``global_unstructured``, iterative
pruning through ``PruningContainer``, ``prune.remove``). :func:`level_prune` and
:func:`global_level_prune` use the same mask computation but store the mask in a
:class:`~torchprune_share.parametrizations.PruningMask` parametrization, which composes
with weight sharing, deep-copies, and bakes with ``parametrize.remove_parametrizations``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .compat import prune_hook
from .parametrizations import PruningMask, WeightSharing, index_dtype, register
from .state import FOREIGN, TORCH_PRUNED, TensorState, class_name

__all__ = [
    "LevelPruningMethod",
    "SigmaThresholdPruningMethod",
    "global_level_prune",
    "level_prune",
    "sigma_prune",
]


# -- argument checks ------------------------------------------------------------------
def validate_amount(amount: object) -> None:
    """Raise unless ``amount`` is a float in [0, 1] or a non-negative int.

    Args:
        amount (object): the value to check. ``bool`` is rejected (it is an ``int`` in
            Python, but ``amount=True`` is almost certainly a mistake).

    Raises:
        TypeError: ``amount`` is not a real number, or is a ``bool``.
        ValueError: a float outside [0, 1] (NaN included) or a negative int.

    Example:
        >>> validate_amount(0.5)
        >>> validate_amount(1.5)
        Traceback (most recent call last):
        ...
        ValueError: amount must be a float in [0, 1] when a float, got 1.5
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(
            f"amount must be a float in [0, 1] or a non-negative int, got {type(amount).__name__}"
        )
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount must be a non-negative int when an int, got {amount}")
    elif not (0.0 <= float(amount) <= 1.0):
        raise ValueError(f"amount must be a float in [0, 1] when a float, got {amount}")


def amount_to_count(amount: float | int, n: int) -> int:
    """Number of entries to prune among ``n``: ``round(amount * n)`` or the int itself.

    Args:
        amount (float or int): a fraction in [0, 1] or a count in [0, n].
        n (int): the number of entries that can still be pruned.

    Returns:
        The count, an ``int`` in [0, n]. Python's ``round`` (half to even), as torch's
        ``prune`` uses.

    Raises:
        TypeError, ValueError: see :func:`validate_amount`; also an int ``amount > n``.

    Example:
        >>> amount_to_count(0.3, 10), amount_to_count(0.25, 10), amount_to_count(7, 10)
        (3, 2, 7)
    """
    validate_amount(amount)
    if isinstance(amount, numbers.Integral):
        if amount > n:
            raise ValueError(
                f"amount={amount} must be at most the number of unpruned entries ({n})"
            )
        return int(amount)
    return round(float(amount) * n)


def check_finite(t: Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or Inf.

    Args:
        t (Tensor): the tensor to check (non-floating tensors always pass).
        what (str): how to name ``t`` in the message.

    Example:
        >>> check_finite(torch.tensor([1.0, float("nan")]), "weight")
        Traceback (most recent call last):
        ...
        ValueError: weight contains NaN or Inf; only finite values can be compressed
    """
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or Inf; only finite values can be compressed")


def smallest_k(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of exactly the ``k`` smallest entries of ``scores`` (ties: lowest index).

    The threshold comes from a selection (``np.partition`` on CPU, ``torch.kthvalue``
    elsewhere), not a sort or ``topk``.

    Args:
        scores (Tensor): 1-D scores; ``inf`` entries are never chosen while ``k`` leaves
            room.
        k (int): how many to choose, ``0 <= k <= scores.numel()``.

    Returns:
        ``bool`` tensor shaped like ``scores``.

    Example:
        >>> smallest_k(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2)
        tensor([False,  True, False,  True])
    """
    n = scores.numel()
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if scores.device.type == "cpu":
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.to(torch.float32)
        arr = scores.detach().numpy()
        threshold = torch.tensor(np.partition(arr, k - 1)[k - 1], dtype=scores.dtype)
    else:
        threshold = torch.kthvalue(scores.detach(), k).values
    chosen = scores < threshold
    missing = k - int(chosen.sum())
    if missing > 0:
        # Ties at the threshold: take the first ``missing`` of them, in index order.
        ties = torch.nonzero(scores == threshold).flatten()[:missing]
        chosen[ties] = True
    return chosen


def level_mask(scores: Tensor, keep: Tensor, amount: float | int) -> Tensor:
    """Prune ``amount`` of the kept entries with the smallest ``|scores|``.

    Args:
        scores (Tensor): importance (magnitude is taken), any shape.
        keep (Tensor): ``bool``, the currently unpruned entries.
        amount (float or int): fraction of the kept entries (float) or count (int).

    Returns:
        The new ``bool`` keep-mask: a subset of ``keep`` with exactly
        ``amount_to_count(amount, keep.sum())`` fewer entries.

    Example:
        >>> w = torch.tensor([0.5, -0.1, 0.3, 0.2])
        >>> level_mask(w, torch.tensor([True, True, False, True]), amount=0.5)  # round(1.5) = 2
        tensor([ True, False, False, False])
    """
    n_keep = int(keep.sum())
    k = amount_to_count(amount, n_keep)
    flat = (
        scores.detach()
        .abs()
        .reshape(-1)
        .to(torch.float32 if scores.dtype != torch.float64 else torch.float64)
    )
    flat = flat.masked_fill(~keep.reshape(-1), math.inf)
    return keep & ~smallest_k(flat, k).view(keep.shape)


# -- torch.nn.utils.prune methods -----------------------------------------------------
class LevelPruningMethod(prune.BasePruningMethod):
    r"""Prune the ``amount`` smallest-magnitude entries of the still-unpruned ones.

    Args:
        amount (int or float): quantity of parameters to prune. A float in [0, 1] prunes
            ``round(amount * n)`` of the ``n`` entries not yet masked; an int prunes that
            many. Ties in magnitude are broken by position (lowest index first), so the
            count is exact.

    Example:
        >>> lin = nn.Linear(10, 10)
        >>> _ = LevelPruningMethod.apply(lin, "weight", amount=0.3)
        >>> int((lin.weight == 0).sum())
        30
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: float | int) -> None:
        validate_amount(amount)
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """Return ``default_mask`` with the ``amount`` smallest unmasked ``|t|`` zeroed.

        Args:
            t (Tensor): the tensor (or importance scores) to prune.
            default_mask (Tensor): the mask from earlier pruning; only its nonzero entries
                are candidates.

        Returns:
            The new mask, of ``default_mask``'s dtype.

        Example:
            >>> LevelPruningMethod(1).compute_mask(torch.tensor([3.0, -1.0, 2.0]), torch.ones(3))
            tensor([1., 0., 1.])
        """
        keep = level_mask(t, default_mask != 0, self.amount)
        return keep.to(default_mask.dtype)

    @classmethod
    def apply(  # type: ignore[override]
        cls,
        module: nn.Module,
        name: str,
        amount: float | int,
        importance_scores: Tensor | None = None,
    ) -> LevelPruningMethod:
        """Add the pruning hook and mask to ``module.<name>`` (torch's hook mechanism).

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): parameter name within ``module``.
            amount (int or float): see the class docstring.
            importance_scores (Tensor, optional): scores in place of the parameter's values.

        Returns:
            The method instance attached to the module (a ``PruningContainer`` when the
            tensor was pruned before).

        Example:
            >>> lin = nn.Linear(4, 4)
            >>> _ = LevelPruningMethod.apply(lin, "weight", amount=6)
            >>> int((lin.weight == 0).sum()), sorted(lin.state_dict())
            (6, ['bias', 'weight_mask', 'weight_orig'])
        """
        # Check the count before torch's apply moves the parameter: its roll-back on a
        # failed compute_mask re-registers it, which reorders the state_dict.
        validate_amount(amount)
        mask = getattr(module, name + "_mask", None)
        if isinstance(mask, Tensor) and prune_hook(module, name) is not None:
            amount_to_count(amount, int((mask != 0).sum()))
        elif isinstance(getattr(module, name, None), Tensor):
            amount_to_count(amount, getattr(module, name).numel())
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class SigmaThresholdPruningMethod(prune.BasePruningMethod):
    r"""Prune entries with ``|w| < q * std(w)`` (Han et al. 2015's threshold).

    The standard deviation is taken over the still-unpruned entries.

    Args:
        q (float): the sensitivity multiplier, ``q >= 0``.

    Example:
        >>> lin = nn.Linear(100, 100)
        >>> _ = SigmaThresholdPruningMethod.apply(lin, "weight", q=1.0)
        >>> 0.5 < float((lin.weight == 0).float().mean()) < 0.8
        True
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, q: float) -> None:
        if isinstance(q, bool) or not isinstance(q, numbers.Real):
            raise TypeError(f"q must be a non-negative float, got {type(q).__name__}")
        if not (q >= 0 and math.isfinite(q)):
            raise ValueError(f"q must be a finite float >= 0, got {q}")
        self.q = float(q)

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """Return ``default_mask`` with the unmasked entries below ``q * std`` zeroed.

        Args:
            t (Tensor): the tensor (or importance scores) to prune.
            default_mask (Tensor): the mask from earlier pruning.

        Returns:
            The new mask, of ``default_mask``'s dtype.

        Example:
            >>> t = torch.tensor([-2.0, -0.1, 0.2, 2.0])
            >>> SigmaThresholdPruningMethod(0.5).compute_mask(t, torch.ones(4))
            tensor([1., 0., 0., 1.])
        """
        keep = default_mask != 0
        kept = t.detach()[keep].double()
        if kept.numel() < 2:
            return default_mask.clone()
        threshold = self.q * float(kept.std())
        return (keep & (t.detach().abs() >= threshold)).to(default_mask.dtype)

    @classmethod
    def apply(  # type: ignore[override]
        cls, module: nn.Module, name: str, q: float, importance_scores: Tensor | None = None
    ) -> SigmaThresholdPruningMethod:
        """Add the pruning hook and mask to ``module.<name>`` (torch's hook mechanism).

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): parameter name within ``module``.
            q (float): see the class docstring.
            importance_scores (Tensor, optional): scores in place of the parameter's values.

        Returns:
            The method instance attached to the module.

        Example:
            >>> lin = nn.Linear(2, 2)
            >>> with torch.no_grad():
            ...     _ = lin.weight.copy_(torch.tensor([[-2.0, -0.1], [0.2, 2.0]]))
            >>> _ = SigmaThresholdPruningMethod.apply(lin, "weight", q=0.5)
            >>> (lin.weight == 0).tolist()
            [[False, True], [True, False]]
        """
        return super().apply(module, name, q=q, importance_scores=importance_scores)


# -- reparametrization-based pruning ----------------------------------------------------
# 0.1.0 name of compat.prune_hook, kept for the merge of parallel branches.
_torch_hook = prune_hook


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
            parametrization, is empty, or holds NaN/Inf.

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
    updates its mask; a plain (or torch-pruned) one gets a :class:`PruningMask`. ``keep``
    is trusted (callers pass a subset of the current keep-mask, of the tensor's shape).

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
            if state.kind == TORCH_PRUNED:
                state.to_plain()
            register(module, name, PruningMask(keep))


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
