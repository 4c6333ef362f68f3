"""Bit-width sensitivity of k-means weight sharing, dnn-compression-style names (a face over :mod:`.analysis`).

Example:
    >>> from torchprune_share import bits_analysis  # doctest: +SKIP
    >>> bits = bits_analysis.perform_bits_analysis(  # doctest: +SKIP
    ...     model, val_loader, [6, 4, 2], validate_func, criterion)
    >>> bits_analysis.sensitivities_to_png(bits, "bits.png")  # doctest: +SKIP
    >>> bits_analysis.sensitivities_to_csv(bits, "bits.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from .analysis import BitLevels, ScanResult, make_evaluator, scan
from .analysis import scan_to_csv as sensitivities_to_csv
from .analysis import scan_to_png as sensitivities_to_png
from .config import DEFAULT_INIT

__all__ = ["perform_bits_analysis", "sensitivities_to_csv", "sensitivities_to_png"]


def perform_bits_analysis(
    model: nn.Module,
    val_loader: Iterable[Any] | None,
    bits: Iterable[int],
    validate_func: Callable[..., Any] | None = None,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    granularity: str = "per_tensor",
    channel_axis: int = 0,
    init: str = DEFAULT_INIT,
    method: str = "lloyd",
    seed: int | None = None,
    param_names: Sequence[str] | None = None,
    stop_below: float | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    group: Any = None,
) -> ScanResult:
    r"""Share each tensor alone at each bit width, evaluate, and restore it exactly.

    At ``b`` bits the tensor's unpruned entries are replaced by their k-means centroids
    (at most ``2**b``), bitwise as :func:`~torchprune_share.register_weight_sharing` with
    the same settings would make them; pruned entries stay zero. Widths are scanned from
    the widest down (so ``stop_below`` stops before the narrowest), and reported sorted
    ascending.

    Args:
        model (nn.Module): the trained (possibly pruned or shared) model; bitwise unchanged
            afterwards.
        val_loader (Iterable, optional): validation batches; ``None`` calls
            ``validate_func(model)``.
        bits (Iterable[int]): widths in [1, 16].
        validate_func (callable, optional): ``validate_func(model, val_loader, criterion)``
            returning ``(accuracy, loss)`` or a dict of metrics; default
            :func:`torchprune_share.training.evaluate`.
        criterion (callable, optional): the loss passed to ``validate_func``.
        granularity (str): ``"per_tensor"`` or ``"per_channel"`` codebooks.
        channel_axis (int): channel dimension for ``"per_channel"``.
        init (str): k-means initialisation (``"auto"``, the default, is ``"linear"``: a
            scan is data-free).
        method (str): k-means method. Default: ``"lloyd"``.
        seed (int, optional): seed for random inits (a fresh generator per point).
        param_names (Sequence[str], optional): tensors to scan (``"fc1.weight"``); default
            every weight of dim >= 2, which ``"*"`` also stands for (``["*", "fc1.bias"]``).
        stop_below (float, optional): per tensor, stop after the first width whose
            accuracy is below this.
        max_batches (int, optional): evaluate on the first batches of ``val_loader`` only.
        progress (bool): tqdm bar over the points. Default: True.
        distributed (bool, optional): split the points across ranks when
            ``torch.distributed`` is initialised (default ``None``: automatic).
        group (ProcessGroup, optional): the process group.

    Returns:
        :class:`~torchprune_share.analysis.ScanResult`,
        ``{param_name: {bits: {"accuracy": ..., "loss": ...}}}``.

    Example:
        >>> from torchprune_share.data import load_digits, make_loaders
        >>> from torchprune_share.models import LeNet300100
        >>> val = make_loaders(load_digits())[1]
        >>> r = perform_bits_analysis(LeNet300100(8), val, [6, 2], progress=False)
        >>> list(r["fc3.weight"])
        [2, 6]
    """
    evaluate = make_evaluator(val_loader, validate_func, criterion, max_batches)
    kind = BitLevels(
        granularity=granularity, channel_axis=channel_axis, init=init, method=method, seed=seed
    )
    return scan(
        model,
        bits,
        evaluate,
        kind=kind,
        param_names=param_names,
        stop_below=stop_below,
        progress=progress,
        distributed=distributed,
        group=group,
    )
