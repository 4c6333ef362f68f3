"""A scan's results (:class:`ScanResult`) and how they are written: CSV and PNG plots."""

from __future__ import annotations

import csv
import logging
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_open, atomic_save_figure
from .evaluation import as_metrics

__all__ = ["ScanResult", "as_result", "format_level", "scan_to_csv", "scan_to_png"]

logger = logging.getLogger(__name__)


def format_level(level: Any) -> str:
    """A level as written in logs and CSV files: an int as is, a float rounded.

    Args:
        level (int or float): the level.

    Example:
        >>> format_level(4), format_level(0.1 + 0.2)
        ('4', '0.3')
    """
    if isinstance(level, numbers.Integral):
        return str(int(level))
    return repr(round(float(level), 10))


class ScanResult(dict):
    r"""A scan's results: ``{parameter: {level: {metric: value}}}``, plus the baseline.

    A ``dict`` (the format of the dnn-compression-style API), ordered as the parameters
    were given, with levels sorted ascending. A level that was skipped by an early stop is
    absent. The other arguments are also its attributes.

    Args:
        data (Mapping, optional): ``{parameter: {level: metrics}}``.
        kind (str): the level kind's name (``"sparsity"``, ``"bits"``, ...).
        axis_label (str): x-axis label for plots.
        baseline (dict): the metrics of the unchanged model.
        baseline_label (str): legend label of the baseline.
        timings (dict): seconds spent (``total``, ``evaluate``, ``transform``, ``baseline``)
            and the number of evaluations, on this process.

    Example:
        >>> r = ScanResult({"fc.weight": {0.5: {"accuracy": 90.0, "loss": 0.3}}},
        ...                kind="sparsity", baseline={"accuracy": 95.0, "loss": 0.2})
        >>> r.rows()[0]
        {'parameter': 'fc.weight', 'level': 0.5, 'accuracy': 90.0, 'loss': 0.3}
    """

    def __init__(
        self,
        data: Mapping[str, Mapping[Any, Mapping[str, float]]] | None = None,
        *,
        kind: str = "level",
        axis_label: str | None = None,
        baseline: Mapping[str, float] | None = None,
        baseline_label: str = "dense baseline",
        timings: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__({k: {lv: dict(m) for lv, m in v.items()} for k, v in (data or {}).items()})
        self.kind = kind
        self.axis_label = axis_label or kind
        self.baseline = dict(baseline or {})
        self.baseline_label = baseline_label
        self.timings = dict(timings or {})

    @property
    def metrics(self) -> list[str]:
        """Metric names, ``accuracy`` and ``loss`` first."""
        names: dict[str, None] = {"accuracy": None, "loss": None}
        for levels in self.values():
            for m in levels.values():
                names.update(dict.fromkeys(m))
        present = set(self.baseline)
        for levels in self.values():
            for m in levels.values():
                present.update(m)
        return [n for n in names if n in present]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per point: ``parameter``, ``level`` and every metric.

        Returns:
            The rows, in parameter then level order.

        Example:
            >>> ScanResult({"w": {2: {"accuracy": 9.0}, 4: {"accuracy": 9.5}}}).rows()[1]
            {'parameter': 'w', 'level': 4, 'accuracy': 9.5}
        """
        return [
            {"parameter": param, "level": level, **metrics}
            for param, levels in self.items()
            for level, metrics in levels.items()
        ]

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows to ``path``; see :func:`scan_to_csv`.

        Args:
            path (str or Path): the file.

        Example:
            >>> ScanResult({"w": {0.5: {"accuracy": 9.0, "loss": 0.1}}}).to_csv("s.csv").name
            's.csv'
        """
        return scan_to_csv(self, path)

    def to_png(self, path: str | Path, metric: str = "accuracy", **kwargs: Any) -> Path:
        """Plot one line per parameter to ``path``; see :func:`scan_to_png`.

        Args:
            path (str or Path): the PNG file.
            metric (str): the metric on the y axis.
            **kwargs: as :func:`scan_to_png` takes them.

        Example:
            >>> r = ScanResult({"w": {0.5: {"accuracy": 9.0, "loss": 0.1}}}, baseline={"loss": 0.1})
            >>> r.to_png("s.png", metric="loss").suffix
            '.png'
        """
        return scan_to_png(self, path, metric=metric, **kwargs)


def scan_to_csv(result: Mapping[str, Mapping[Any, Any]], path: str | Path) -> Path:
    """Write a scan as CSV with columns ``parameter,level,accuracy,loss`` and any extra metrics.

    Levels are written rounded (``0.3``, not ``0.30000000000000004``), metrics with full
    precision. A metric a point lacks is left empty. The file is written crash-safely
    (:func:`~torchprune_share.atomic.atomic_open`): a file already at ``path`` is replaced
    only by a complete one.

    Args:
        result (Mapping): a :class:`ScanResult` or a ``{parameter: {level: metrics}}`` dict
            whose metrics are dicts or ``(accuracy, loss)`` tuples.
        path (str or Path): the file to write.

    Returns:
        The path written.

    Example:
        >>> r = ScanResult({"w": {0.1 + 0.2: {"accuracy": 1.0, "loss": 2.0}}})
        >>> p = scan_to_csv(r, "scan.csv")
        >>> open(p).read().splitlines()
        ['parameter,level,accuracy,loss', 'w,0.3,1.0,2.0']
    """
    result = as_result(result)
    metrics = result.metrics or ["accuracy", "loss"]
    for must in ("accuracy", "loss"):
        if must not in metrics:
            metrics.insert(0 if must == "accuracy" else 1, must)
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["parameter", "level", *metrics])
        for row in result.rows():
            writer.writerow(
                [row["parameter"], format_level(row["level"])]
                + [repr(float(row[m])) if m in row else "" for m in metrics]
            )
    logger.info("wrote %d rows to %s", len(result.rows()), path)
    return path


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def scan_to_png(
    result: Mapping[str, Mapping[Any, Any]],
    path: str | Path,
    metric: str = "accuracy",
    *,
    title: str | None = None,
    ylabel: str | None = None,
    dpi: int = 120,
) -> Path:
    """Plot a scan: one line per parameter, the baseline dashed, the legend outside the axes.

    Readable with many layers: ten ``tab10`` colours, then the same colours with another
    marker for each further ten layers, and the legend split into columns of at most 20.
    Written crash-safely (:func:`~torchprune_share.atomic.atomic_save_figure`), in the
    format of ``path``'s suffix.

    Args:
        result (Mapping): a :class:`ScanResult` (or a plain dict of the same shape).
        path (str or Path): the PNG file to write.
        metric (str): the metric on the y axis, e.g. ``"accuracy"`` or ``"loss"``.
        title (str, optional): figure title; default from the scan's kind.
        ylabel (str, optional): y-axis label; default ``"validation <metric>"``.
        dpi (int): resolution. Default: 120.

    Returns:
        The path written.

    Example:
        >>> r = ScanResult({"w": {0.5: {"accuracy": 90.0, "loss": 0.3}}},
        ...                baseline={"accuracy": 95.0, "loss": 0.2})
        >>> scan_to_png(r, "scan.png").stat().st_size > 1000
        True
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = as_result(result)
    if metric not in result.metrics:
        raise ValueError(f"metric must be one of {result.metrics}, got {metric!r}")
    n = len(result)
    ncol = max(1, math.ceil(n / 20))
    fig = Figure(figsize=(7.0 + 2.6 * ncol, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw_lines(ax, result, metric, colormaps["tab10"])
    ax.set_xlabel(result.axis_label)
    ax.set_ylabel(ylabel or f"validation {metric}")
    ax.set_title(title or f"{result.kind} sensitivity ({metric})")
    ax.grid(True, alpha=0.3)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=ncol,
        fontsize="small" if n <= 20 else "x-small",
        frameon=False,
    )
    path = Path(path)
    atomic_save_figure(fig, path, dpi=dpi)
    logger.info("wrote %s (%d lines)", path, n)
    return path


def _draw_lines(ax: Any, result: ScanResult, metric: str, cmap: Any) -> None:
    """One line per parameter (ten colours, then a new marker per ten), the baseline dashed."""
    levels_seen: set[Any] = set()
    for i, (param, levels) in enumerate(result.items()):
        xs = [lv for lv, m in levels.items() if metric in m]
        ys = [levels[lv][metric] for lv in xs]
        levels_seen.update(xs)
        ax.plot(
            xs,
            ys,
            color=cmap(i % 10),
            marker=_MARKERS[(i // 10) % len(_MARKERS)],
            markersize=4,
            linewidth=1.4,
            label=param,
        )
    if metric in result.baseline:
        ax.axhline(
            result.baseline[metric],
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"{result.baseline_label} ({result.baseline[metric]:.4g})",
        )
    if levels_seen and all(isinstance(lv, numbers.Integral) for lv in levels_seen):
        ax.set_xticks(sorted(levels_seen))


def as_result(result: Mapping[str, Mapping[Any, Any]]) -> ScanResult:
    """``result`` as a :class:`ScanResult` (a plain ``{parameter: {level: metrics}}`` dict too).

    Args:
        result (Mapping): a :class:`ScanResult` or such a dict.

    Example:
        >>> as_result({"w": {2: (90.0, 0.3)}})["w"][2]
        {'accuracy': 90.0, 'loss': 0.3}
    """
    if isinstance(result, ScanResult):
        return result
    if not isinstance(result, Mapping):
        raise TypeError(f"expected a ScanResult or a dict, got {type(result).__name__}")
    data = {p: {lv: as_metrics(m) for lv, m in levels.items()} for p, levels in result.items()}
    return ScanResult(data)
