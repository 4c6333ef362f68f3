"""From a sensitivity scan to a policy's options: :func:`recommend_sparsities`, :func:`recommend_bits`."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

from .results import ScanResult

__all__ = ["recommend_bits", "recommend_sparsities"]

logger = logging.getLogger(__name__)


def _acceptance(
    scan: Mapping[str, Mapping[Any, Mapping[str, float]]],
    max_drop: float,
    metric: str,
    baseline: float | None,
    higher_is_better: bool | None,
) -> tuple[float, bool]:
    if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real):
        raise TypeError(f"max_drop must be a number >= 0, got {type(max_drop).__name__}")
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be a number >= 0, got {max_drop!r}")
    if baseline is None:
        base = getattr(scan, "baseline", {})
        if metric not in base:
            raise ValueError(
                f"no baseline {metric!r} in the scan; pass baseline= (the unchanged model's {metric})"
            )
        baseline = base[metric]
    if higher_is_better is None:
        higher_is_better = "loss" not in metric.lower()
    return float(baseline), higher_is_better


def _ok(
    metrics: Mapping[str, float] | None, metric: str, baseline: float, max_drop: float, higher: bool
) -> bool:
    if metrics is None or metric not in metrics:
        return False
    value = float(metrics[metric])
    return value >= baseline - max_drop if higher else value <= baseline + max_drop


def recommend_sparsities(
    sens: ScanResult | Mapping[str, Mapping[float, Mapping[str, float]]],
    max_drop: float = 1.0,
    *,
    metric: str = "accuracy",
    baseline: float | None = None,
    higher_is_better: bool | None = None,
) -> list[list[Any]]:
    r"""Per tensor, the highest scanned sparsity whose ``metric`` stays within ``max_drop``.

    Levels are walked upwards and the walk stops at the first level that fails, so a noisy
    recovery after a failure is not trusted; a tensor whose first level fails gets 0.0.

    Args:
        sens: a pruning scan (:func:`~torchprune_share.sensitivity.perform_sensitivity_analysis`).
        max_drop (float): allowed drop of ``metric`` below the baseline (rise, for a loss),
            in the metric's units (accuracy in percent points with the default validate).
        metric (str): the metric. Default: ``"accuracy"``.
        baseline (float, optional): the unchanged model's metric; default the scan's.
        higher_is_better (bool, optional): default ``False`` for metrics named like a loss.

    Returns:
        ``[[name, sparsity], ...]``, the options of a :class:`LevelPruner`.

    Example:
        >>> sens = ScanResult({"fc.weight": {0.5: {"accuracy": 97.5}, 0.8: {"accuracy": 95.0}}},
        ...                   baseline={"accuracy": 98.0})
        >>> recommend_sparsities(sens, max_drop=1.0)
        [['fc.weight', 0.5]]
    """
    base, higher = _acceptance(sens, max_drop, metric, baseline, higher_is_better)
    out = []
    for name, levels in sens.items():
        chosen = 0.0
        for level in sorted(levels):
            if not _ok(levels[level], metric, base, max_drop, higher):
                break
            chosen = float(level)
        out.append([name, chosen])
    return out


def recommend_bits(
    bits: ScanResult | Mapping[str, Mapping[int, Mapping[str, float]]],
    max_drop: float = 1.0,
    *,
    metric: str = "accuracy",
    baseline: float | None = None,
    higher_is_better: bool | None = None,
) -> list[list[Any]]:
    r"""Per tensor, the fewest scanned bits whose ``metric`` stays within ``max_drop``.

    Widths are walked downwards from the widest and the walk stops at the first failure. A
    tensor whose widest scanned width already fails is left out (and logged as a warning).

    Args:
        bits: a bits scan (:func:`~torchprune_share.bits_analysis.perform_bits_analysis`).
        max_drop (float): allowed drop of ``metric`` below the baseline (rise, for a loss).
        metric (str): the metric. Default: ``"accuracy"``.
        baseline (float, optional): the unchanged model's metric; default the scan's.
        higher_is_better (bool, optional): default ``False`` for metrics named like a loss.

    Returns:
        ``[[name, bits], ...]``, the options of a :class:`Quantizer` (the container type
        of :func:`recommend_sparsities`).

    Example:
        >>> scan = ScanResult({"fc.weight": {2: {"accuracy": 90.0}, 4: {"accuracy": 97.9},
        ...                                  6: {"accuracy": 98.0}}}, baseline={"accuracy": 98.0})
        >>> recommend_bits(scan, max_drop=0.5)
        [['fc.weight', 4]]
    """
    base, higher = _acceptance(bits, max_drop, metric, baseline, higher_is_better)
    out = []
    for name, levels in bits.items():
        chosen = None
        for level in sorted(levels, reverse=True):
            if not _ok(levels[level], metric, base, max_drop, higher):
                break
            chosen = int(level)
        if chosen is None:
            logger.warning(
                "%s: no scanned width keeps %s within %s; left unshared", name, metric, max_drop
            )
        else:
            out.append([name, chosen])
    return out
