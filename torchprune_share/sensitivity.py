"""Pruning sensitivity analysis with the dnn-compression-style names (a face over :mod:`.analysis`).

Example:
    >>> from torchprune_share import sensitivity  # doctest: +SKIP
    >>> sens = sensitivity.perform_sensitivity_analysis(  # doctest: +SKIP
    ...     model, val_loader, [0.1, 0.3, 0.5, 0.7, 0.9], validate_func, criterion)
    >>> sensitivity.sensitivities_to_png(sens, "prune_sens.png")  # doctest: +SKIP
    >>> sensitivity.sensitivities_to_csv(sens, "prune_sens.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from .analysis import ScanResult, SparsityLevels, make_evaluator, scan
from .analysis import scan_to_csv as sensitivities_to_csv
from .analysis import scan_to_png as sensitivities_to_png

__all__ = ["perform_sensitivity_analysis", "sensitivities_to_csv", "sensitivities_to_png"]


def perform_sensitivity_analysis(
    model: nn.Module,
    val_loader: Iterable[Any] | None,
    sparsities: Iterable[float],
    validate_func: Callable[..., Any] | None = None,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    param_names: Sequence[str] | None = None,
    stop_below: float | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    group: Any = None,
) -> ScanResult:
    r"""Prune each tensor alone to each sparsity, evaluate, and restore it exactly.

    At sparsity ``s`` the ``round(s * n)`` smallest-magnitude entries of the tensor (of
    ``n``) are zero, counting entries already pruned. Everything else as in
    :func:`torchprune_share.analysis.scan`.

    Args:
        model (nn.Module): the trained model; bitwise unchanged afterwards.
        val_loader (Iterable, optional): validation batches; ``None`` calls
            ``validate_func(model)``.
        sparsities (Iterable[float]): levels in [0, 1]; sorted and de-duplicated.
        validate_func (callable, optional): ``validate_func(model, val_loader, criterion)``
            returning ``(accuracy, loss)`` or a dict of metrics; default
            :func:`torchprune_share.training.evaluate`.
        criterion (callable, optional): the loss passed to ``validate_func``.
        param_names (Sequence[str], optional): tensors to scan (``"fc1.weight"``); default
            every weight of dim >= 2, which ``"*"`` also stands for (``["*", "fc1.bias"]``).
        stop_below (float, optional): per tensor, stop after the first sparsity whose
            accuracy is below this.
        max_batches (int, optional): evaluate on the first batches of ``val_loader`` only.
        progress (bool): tqdm bar over the points. Default: True.
        distributed (bool, optional): split the points across ranks when
            ``torch.distributed`` is initialised (default ``None``: automatic).
        group (ProcessGroup, optional): the process group.

    Returns:
        :class:`~torchprune_share.analysis.ScanResult`,
        ``{param_name: {sparsity: {"accuracy": ..., "loss": ...}}}``.

    Example:
        >>> from torchprune_share.data import load_digits, make_loaders
        >>> from torchprune_share.models import LeNet300100
        >>> val = make_loaders(load_digits())[1]
        >>> sens = perform_sensitivity_analysis(LeNet300100(8), val, [0.5, 0.9], progress=False)
        >>> list(sens), list(sens["fc1.weight"])
        (['fc1.weight', 'fc2.weight', 'fc3.weight'], [0.5, 0.9])
    """
    evaluate = make_evaluator(val_loader, validate_func, criterion, max_batches)
    return scan(
        model,
        sparsities,
        evaluate,
        kind=SparsityLevels(),
        param_names=param_names,
        stop_below=stop_below,
        progress=progress,
        distributed=distributed,
        group=group,
    )
