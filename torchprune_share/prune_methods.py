"""Magnitude pruning as ``torch.nn.utils.prune`` methods, and the mask computation they share.

:class:`LevelPruningMethod` and :class:`SigmaThresholdPruningMethod` are
:class:`~torch.nn.utils.prune.BasePruningMethod` subclasses, so they work wherever torch
takes a method (``apply``, ``global_unstructured``, iterative pruning through
``PruningContainer``, ``prune.remove``). :func:`level_mask` is the selection
:func:`~torchprune_share.level_prune` uses too. Tensors in, masks out.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .compat import prune_hook
from .registration import builds_state

__all__ = [
    "LevelPruningMethod",
    "SigmaThresholdPruningMethod",
    "amount_to_count",
    "check_finite",
    "level_mask",
    "smallest_k",
    "validate_amount",
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
    @builds_state
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
    @builds_state
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
