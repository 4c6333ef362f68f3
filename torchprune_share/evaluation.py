"""How a scan evaluates a model: ``model -> {metric: value}`` from a validation function."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Evaluator",
    "FirstBatches",
    "Metrics",
    "as_metrics",
    "evaluate_metrics",
    "make_evaluator",
]

Metrics = dict[str, float]
Evaluator = Callable[[nn.Module], Metrics]


def as_metrics(out: object) -> Metrics:
    """Normalize a validation result: a dict, ``(accuracy, loss)``, ``(top1, top5, loss)`` or a number.

    Args:
        out (object): what a validation function returned.

    Returns:
        ``{metric: float}``.

    Raises:
        TypeError: for anything else.

    Example:
        >>> as_metrics((97.5, 0.1))
        {'accuracy': 97.5, 'loss': 0.1}
    """
    if isinstance(out, Mapping):
        return {str(k): float(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        if len(out) == 2:
            return {"accuracy": float(out[0]), "loss": float(out[1])}
        if len(out) == 3:
            return {"accuracy": float(out[0]), "top5": float(out[1]), "loss": float(out[2])}
    elif isinstance(out, (numbers.Real, Tensor)):
        return {"accuracy": float(out)}
    raise TypeError(
        "validate_func must return (accuracy, loss), (top1, top5, loss), a number or a dict "
        f"of metrics, got {out!r}"
    )


class FirstBatches:
    """A re-iterable view of the first ``n`` batches of a loader (``max_batches``).

    Args:
        loader (Iterable): the batches.
        n (int): how many to yield.

    Example:
        >>> list(FirstBatches([1, 2, 3], 2)), len(FirstBatches([1, 2, 3], 2))
        ([1, 2], 2)
    """

    def __init__(self, loader: Iterable[Any], n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return min(len(self.loader), self.n)  # type: ignore[arg-type]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.loader, attr)


def make_evaluator(
    val_loader: Iterable[Any] | None,
    validate_func: Callable[..., Any] | None = None,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_batches: int | None = None,
) -> Evaluator:
    """Turn ``(val_loader, validate_func, criterion)`` into ``model -> metrics``.

    ``validate_func(model, val_loader, criterion)`` may return ``(accuracy, loss)``,
    ``(top1, top5, loss)``, a number or a dict of metrics. With ``val_loader=None`` it is
    called as ``validate_func(model)``.

    Args:
        val_loader (Iterable, optional): validation batches.
        validate_func (callable, optional): default :func:`torchprune_share.training.evaluate`.
        criterion (callable, optional): the loss, passed through.
        max_batches (int, optional): use only the first batches of ``val_loader``.

    Returns:
        A function of the model returning a dict of metrics, run under
        :func:`torch.inference_mode`.

    Example:
        >>> ev = make_evaluator(None, lambda m: {"accuracy": 1.0})
        >>> ev(nn.Linear(1, 1))
        {'accuracy': 1.0}
    """
    if validate_func is None:
        from .training import evaluate as validate_func
    if not callable(validate_func):
        raise TypeError(f"validate_func must be callable, got {type(validate_func).__name__}")
    if max_batches is not None:
        if isinstance(max_batches, bool) or not isinstance(max_batches, numbers.Integral):
            raise TypeError(f"max_batches must be a positive int, got {type(max_batches).__name__}")
        if max_batches < 1:
            raise ValueError(f"max_batches must be a positive int, got {max_batches}")
        if val_loader is None:
            raise ValueError("max_batches needs a val_loader")
        val_loader = FirstBatches(val_loader, int(max_batches))

    def run(model: nn.Module) -> Metrics:
        with torch.inference_mode():
            out = (
                validate_func(model)
                if val_loader is None
                else validate_func(model, val_loader, criterion)
            )
        return as_metrics(out)

    return run


def evaluate_metrics(evaluate: Evaluator, model: nn.Module) -> Metrics:
    """Run ``evaluate(model)`` under :func:`torch.inference_mode` and normalize its metrics.

    Args:
        evaluate (callable): ``model -> metrics``.
        model (nn.Module): the model.

    Example:
        >>> evaluate_metrics(lambda m: 0.5, nn.Linear(1, 1))
        {'accuracy': 0.5}
    """
    with torch.inference_mode():
        return as_metrics(evaluate(model))
