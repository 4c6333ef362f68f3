"""One scan engine for sensitivity analyses: evaluate a model with one tensor changed at a time.

A *scan* walks a grid of (tensor, level) points. At each point it replaces the value of one
tensor by what a compression step would make of it (pruned to a sparsity, clustered to a
bit width, or anything a :class:`LevelKind` computes), evaluates the model, and puts the
tensor back bitwise. :mod:`torchprune_share.sensitivity` (pruning levels) and
:mod:`torchprune_share.bits_analysis` (bit widths) are thin faces over :func:`scan`.

How a tensor is changed for one point, so that restoring it is exact and cheap:

* a plain parameter: its data is saved once per tensor and written back with ``copy_``;
* a tensor reparametrized by ``torch.nn.utils.parametrize`` (this package's
  :class:`~torchprune_share.PruningMask` / :class:`~torchprune_share.WeightSharing`, or a
  foreign one): a constant is appended to its parametrization chain and removed
  afterwards, so its ``original``, mask and index are never written;
* a tensor pruned with ``torch.nn.utils.prune``'s hooks: ``<name>_orig`` and
  ``<name>_mask`` are saved and written back, and the attribute ``<name>`` is reset.

Memory is the model plus two copies of the tensor being scanned (its saved value and its
value at the current level); nothing is deep-copied.
Evaluation runs under :func:`torch.inference_mode` with the model in eval mode.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils import prune
from tqdm import tqdm

from .config import SharingConfig
from .names import (
    default_parameter_names,
    expand_default_names,
    named_tensors,
    resolve_tensor,
)
from .parametrizations import WeightSharing, cluster
from .pruning import compressible_state, level_mask
from .sharing import changed_settings, sharing_config
from .state import FOREIGN, MASKED, SHARED, TORCH_PRUNED, TensorState

__all__ = [
    "BitLevels",
    "LevelKind",
    "PruningMethodLevels",
    "ScanResult",
    "SparsityLevels",
    "default_parameter_names",
    "make_evaluator",
    "named_tensors",
    "resolve_tensor",
    "scan",
    "scan_to_csv",
    "scan_to_png",
]

logger = logging.getLogger(__name__)

Metrics = dict[str, float]
Evaluator = Callable[[nn.Module], Metrics]


# -- level kinds ------------------------------------------------------------------------
def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class LevelKind(ABC):
    r"""What a level means: how one tensor's value changes at a given level.

    Subclass it to scan anything that maps ``(value, keep, level)`` to a new value of the
    same shape; :class:`PruningMethodLevels` does so for any
    ``torch.nn.utils.prune.BasePruningMethod``.

    Attributes:
        name (str): short name, used in logs and as the default title.
        axis_label (str): the x-axis label of plots.
        baseline_label (str): the legend label of the unchanged model's line.
        damage_increases (bool): ``True`` if higher levels change the tensor more (so an
            early stop walks levels upwards), ``False`` if lower ones do (bit widths).

    Example:
        >>> class Noise(LevelKind):  # how robust is each layer to relative noise?
        ...     name, axis_label = "noise", "relative noise"
        ...     def transform(self, value, keep, level):
        ...         g = torch.Generator().manual_seed(0)
        ...         return value * (1 + level * torch.randn(value.shape, generator=g))
        >>> net = nn.Sequential(nn.Linear(4, 2))
        >>> r = scan(net, [0.1, 0.5], lambda m: {"accuracy": 1.0}, kind=Noise(), progress=False)
        >>> list(r["0.weight"])
        [0.1, 0.5]
    """

    name = "level"
    axis_label = "level"
    baseline_label = "dense baseline"
    damage_increases = True

    def normalize(self, levels: Iterable[Any]) -> list[Any]:
        """Check the levels and return them unique, sorted ascending, rounded for display.

        Args:
            levels (Iterable): the levels given by the user.

        Returns:
            The sorted list of distinct levels.

        Example:
            >>> SparsityLevels().normalize([0.5, 0.1 + 0.2, 0.3])
            [0.3, 0.5]
        """
        out = []
        for level in levels:
            if not _is_real(level):
                raise TypeError(f"{self.name} levels must be finite numbers, got {level!r}")
            if not math.isfinite(float(level)):
                raise ValueError(f"{self.name} levels must be finite numbers, got {level!r}")
            out.append(round(float(level), 10))
        if not out:
            raise ValueError(f"at least one {self.name} level is needed")
        return sorted(set(out))

    @abstractmethod
    def transform(self, value: Tensor, keep: Tensor, level: Any) -> Tensor:
        """Return the value ``value`` takes at ``level`` (same shape and dtype).

        Args:
            value (Tensor): the tensor's current effective value (do not modify it).
            keep (Tensor): ``bool``, its currently unpruned entries.
            level: one of the normalized levels.

        Returns:
            The new value; return ``value`` itself when the level leaves it unchanged.
        """


class SparsityLevels(LevelKind):
    r"""Level pruning to a sparsity, as a fraction of the tensor's *total* size.

    At level ``s`` the ``round(s * n)`` smallest-magnitude entries of the tensor are zero;
    entries already pruned count, so a level at or below the current sparsity leaves the
    tensor unchanged. Ties are broken as :func:`~torchprune_share.level_prune` does.

    Example:
        >>> v = torch.tensor([0.3, -0.1, 0.2, 0.4])
        >>> SparsityLevels().transform(v, torch.ones(4, dtype=torch.bool), 0.5)
        tensor([0.3000, -0.0000, 0.0000, 0.4000])
    """

    name = "sparsity"
    axis_label = "sparsity (fraction of the tensor's weights pruned)"

    def normalize(self, levels: Iterable[Any]) -> list[Any]:
        out = super().normalize(levels)
        bad = [s for s in out if not 0.0 <= s <= 1.0]
        if bad:
            raise ValueError(f"sparsities must lie in [0, 1], got {bad}")
        return out

    def transform(self, value: Tensor, keep: Tensor, level: float) -> Tensor:
        n = value.numel()
        extra = round(level * n) - (n - int(keep.sum()))
        if extra <= 0:
            return value
        return value * level_mask(value, keep, extra)


class BitLevels(LevelKind):
    r"""k-means weight sharing to a bit width, as :func:`~torchprune_share.register_weight_sharing`.

    At level ``b`` the unpruned entries are clustered into at most ``2**b`` centroids
    (pruned entries stay zero) and replaced by their centroids, bitwise as the
    parametrization would compute them. An already shared tensor is clustered again from
    its current values, as :func:`~torchprune_share.recluster` does.

    Args:
        granularity (str): ``"per_tensor"`` or ``"per_channel"``.
        channel_axis (int): the channel dimension for ``"per_channel"``.
        init (str): k-means initialisation (see :func:`~torchprune_share.register_weight_sharing`).
        method (str): k-means method.
        seed (int, optional): seed of a fresh generator for every point (random inits),
            so that results do not depend on the order or the rank that computes them.
        config (SharingConfig, optional): the settings as one object (its ``bits`` is
            ignored: each level sets it), in place of the four above.

    Example:
        >>> v = torch.tensor([0.1, 0.2, 0.9, 1.0])
        >>> BitLevels().transform(v, torch.ones(4, dtype=torch.bool), 1)
        tensor([0.1500, 0.1500, 0.9500, 0.9500])
    """

    name = "bits"
    axis_label = "bits per weight (k-means weight sharing)"
    baseline_label = "unshared baseline"
    damage_increases = False

    def __init__(
        self,
        granularity: str = "per_tensor",
        channel_axis: int = 0,
        init: str = "linear",
        method: str = "lloyd",
        seed: int | None = None,
        *,
        config: SharingConfig | None = None,
    ) -> None:
        # bits is a placeholder: each level sets its own.
        self.config = sharing_config(
            config,
            {
                "granularity": granularity,
                "channel_axis": channel_axis,
                "init": init,
                "method": method,
            }
            if config is None
            else changed_settings(
                {
                    "granularity": granularity,
                    "channel_axis": channel_axis,
                    "init": init,
                    "method": method,
                }
            ),
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed

    # The settings, read from the config.
    granularity = property(lambda self: self.config.granularity)
    channel_axis = property(lambda self: self.config.channel_axis)
    init = property(lambda self: self.config.init)
    method = property(lambda self: self.config.method)

    def normalize(self, levels: Iterable[Any]) -> list[Any]:
        widths = [self.config.replace(bits=b).bits for b in levels]  # SharingConfig's rule
        if not widths:
            raise ValueError("at least one bit width is needed")
        return sorted(set(widths))

    def transform(self, value: Tensor, keep: Tensor, level: int) -> Tensor:
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        config = self.config.replace(bits=level)
        codebook, index = cluster(value, keep, config=config, generator=generator)
        sharing = WeightSharing(index, codebook, config=config, cache_index=False)
        return sharing(codebook)


class PruningMethodLevels(LevelKind):
    r"""Levels of any ``torch.nn.utils.prune.BasePruningMethod``: one constructor argument.

    At level ``x`` the tensor is masked by ``method(**{argument: x}).compute_mask(value,
    keep)``, on top of its current mask.

    Args:
        method (type): a ``BasePruningMethod`` subclass, e.g.
            :class:`~torchprune_share.SigmaThresholdPruningMethod`.
        argument (str): the constructor argument the level sets. Default: ``"amount"``.
        name (str, optional): short name; default the argument's.
        axis_label (str, optional): x-axis label of plots.
        damage_increases (bool): whether higher levels prune more. Default: True.

    Example:
        >>> from torchprune_share import SigmaThresholdPruningMethod
        >>> kind = PruningMethodLevels(SigmaThresholdPruningMethod, "q")
        >>> v = torch.tensor([-2.0, -0.1, 0.1, 2.0])
        >>> kind.transform(v, torch.ones(4, dtype=torch.bool), 0.5).tolist()
        [-2.0, -0.0, 0.0, 2.0]
    """

    def __init__(
        self,
        method: type[prune.BasePruningMethod],
        argument: str = "amount",
        *,
        name: str | None = None,
        axis_label: str | None = None,
        damage_increases: bool = True,
    ) -> None:
        if not (isinstance(method, type) and issubclass(method, prune.BasePruningMethod)):
            raise TypeError(f"method must be a BasePruningMethod subclass, got {method!r}")
        self.method, self.argument = method, argument
        self.name = name or argument
        self.axis_label = axis_label or f"{method.__name__}({argument}=...)"
        self.damage_increases = damage_increases

    def normalize(self, levels: Iterable[Any]) -> list[Any]:
        out = super().normalize(levels)
        for level in out:  # let the method check its own argument, before anything runs
            self.method(**{self.argument: level})
        return out

    def transform(self, value: Tensor, keep: Tensor, level: float) -> Tensor:
        mask = self.method(**{self.argument: level}).compute_mask(value, keep.to(value.dtype))
        new_keep = keep & (mask != 0)
        if bool(new_keep.eq(keep).all()):
            return value
        return value * new_keep


# -- results ----------------------------------------------------------------------------
def _format_level(level: Any) -> str:
    if isinstance(level, numbers.Integral):
        return str(int(level))
    return repr(round(float(level), 10))


class ScanResult(dict):
    r"""A scan's results: ``{parameter: {level: {metric: value}}}``, plus the baseline.

    A ``dict`` (the format of the dnn-compression-style API), ordered as the parameters were given, with levels
    sorted ascending. A level that was skipped by an early stop is absent.

    Attributes:
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

        Example:
            >>> ScanResult({"w": {0.5: {"accuracy": 9.0, "loss": 0.1}}}).to_csv("s.csv").name
            's.csv'
        """
        return scan_to_csv(self, path)

    def to_png(self, path: str | Path, metric: str = "accuracy", **kwargs: Any) -> Path:
        """Plot one line per parameter to ``path``; see :func:`scan_to_png`.

        Example:
            >>> r = ScanResult({"w": {0.5: {"accuracy": 9.0, "loss": 0.1}}}, baseline={"loss": 0.1})
            >>> r.to_png("s.png", metric="loss").suffix
            '.png'
        """
        return scan_to_png(self, path, metric=metric, **kwargs)


def scan_to_csv(result: Mapping[str, Mapping[Any, Any]], path: str | Path) -> Path:
    """Write a scan as CSV with columns ``parameter,level,accuracy,loss`` and any extra metrics.

    Levels are written rounded (``0.3``, not ``0.30000000000000004``), metrics with full
    precision. A metric a point lacks is left empty.

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
    result = _as_result(result)
    metrics = result.metrics or ["accuracy", "loss"]
    for must in ("accuracy", "loss"):
        if must not in metrics:
            metrics.insert(0 if must == "accuracy" else 1, must)
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["parameter", "level", *metrics])
        for row in result.rows():
            writer.writerow(
                [row["parameter"], _format_level(row["level"])]
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

    result = _as_result(result)
    if metric not in result.metrics:
        raise ValueError(f"metric must be one of {result.metrics}, got {metric!r}")
    n = len(result)
    ncol = max(1, math.ceil(n / 20))
    fig = Figure(figsize=(7.0 + 2.6 * ncol, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
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
    fig.savefig(path, dpi=dpi)
    logger.info("wrote %s (%d lines)", path, n)
    return path


def _as_result(result: Mapping[str, Mapping[Any, Any]]) -> ScanResult:
    if isinstance(result, ScanResult):
        return result
    if not isinstance(result, Mapping):
        raise TypeError(f"expected a ScanResult or a dict, got {type(result).__name__}")
    data = {p: {lv: _as_metrics(m) for lv, m in levels.items()} for p, levels in result.items()}
    return ScanResult(data)


# -- evaluation ---------------------------------------------------------------------------
def _as_metrics(out: object) -> Metrics:
    """Normalize a validation result: a dict, ``(accuracy, loss)``, ``(top1, top5, loss)`` or a number."""
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


class _FirstBatches:
    """A re-iterable view of the first ``n`` batches of a loader (``max_batches``)."""

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
        val_loader = _FirstBatches(val_loader, int(max_batches))

    def run(model: nn.Module) -> Metrics:
        with torch.inference_mode():
            out = (
                validate_func(model)
                if val_loader is None
                else validate_func(model, val_loader, criterion)
            )
        return _as_metrics(out)

    return run


# -- the engine ---------------------------------------------------------------------------
class _Constant(nn.Module):
    """Last link of a parametrization chain that returns a fixed tensor (not saved anywhere)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return self.value


class _Slot:
    """Temporarily replaces the value of ``module.<name>`` and restores it bitwise."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name = module, name
        self.written = False
        self.override: _Constant | None = None
        state = TensorState.of(module, name)
        self.param = state.parameter()
        with torch.no_grad():
            if state.kind == FOREIGN:
                # Scan its output, which may alias state.
                self.mode = "parametrized"
                self.value = state.value().clone()
                self.keep = torch.ones_like(self.value, dtype=torch.bool)
            elif state.kind in (MASKED, SHARED):
                # A fresh tensor (mask * original, or the gathered codebook).
                self.mode = "parametrized"
                self.value, self.keep = compressible_state(module, name)
            elif state.kind == TORCH_PRUNED:
                self.mode = "hook"
                self.value, self.keep = compressible_state(module, name)
                self.mask = getattr(module, name + "_mask")
                self.saved = (
                    self.param.detach().clone(),
                    self.mask.clone(),
                    module.__dict__.get(name),
                )
            else:
                self.mode = "param"
                value, self.keep = compressible_state(module, name)
                self.value = value.clone()  # also the copy that restores the parameter

    def write(self, new: Tensor) -> None:
        with torch.no_grad():
            if self.mode == "parametrized":
                if self.override is None:
                    self.override = _Constant(new)
                    self.module.parametrizations[self.name].append(self.override)
                else:
                    self.override.value = new
            elif self.mode == "hook":
                self.param.detach().copy_(new)
                self.mask.fill_(1)
            else:
                self.param.detach().copy_(new)
        self.written = True

    def restore(self) -> None:
        if not self.written:
            return
        with torch.no_grad():
            if self.mode == "parametrized":
                chain = self.module.parametrizations[self.name]
                if chain[-1] is not self.override:
                    raise RuntimeError(
                        f"the parametrization chain of {self.name!r} changed during a scan"
                    )
                del chain[len(chain) - 1]
                self.override = None
            elif self.mode == "hook":
                orig, mask, attr = self.saved
                self.param.detach().copy_(orig)
                self.mask.copy_(mask)
                if attr is not None:
                    setattr(self.module, self.name, attr)
            else:
                self.param.detach().copy_(self.value)
        self.written = False


def _evaluate(evaluate: Evaluator, model: nn.Module) -> Metrics:
    with torch.inference_mode():
        return _as_metrics(evaluate(model))


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return a is b or (torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b)))


def _world(distributed: bool | None, group: Any) -> tuple[int, int]:
    ready = dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed is None and not ready):
        return 0, 1
    if not ready:
        raise RuntimeError("distributed=True needs torch.distributed to be initialised")
    return dist.get_rank(group), dist.get_world_size(group)


def _my_points(
    n_tensors: int, order: Sequence[int], rank: int, world: int, by_tensor: bool
) -> list[tuple[int, int]]:
    """This rank's (tensor, level) points, grouped by tensor, in scan order."""
    if by_tensor:  # an early stop walks one tensor's levels in sequence on one rank
        return [(t, lv) for t in range(n_tensors) if t % world == rank for lv in order]
    points = [(t, lv) for t in range(n_tensors) for lv in order]
    lo, hi = rank * len(points) // world, (rank + 1) * len(points) // world
    return points[lo:hi]


def scan(
    model: nn.Module,
    levels: Iterable[Any],
    evaluate: Evaluator,
    *,
    kind: LevelKind,
    param_names: Sequence[str] | None = None,
    stop_below: float | None = None,
    stop_metric: str = "accuracy",
    progress: bool = True,
    distributed: bool | None = None,
    group: Any = None,
) -> ScanResult:
    r"""Evaluate ``model`` with each tensor in turn changed to each level; restore it exactly.

    For every parameter and every level, the tensor's value is replaced by
    ``kind.transform(value, keep, level)``, the model is evaluated under
    :func:`torch.inference_mode` (in eval mode), and the tensor is put back bitwise
    (parameters, buffers and reparametrizations are as before; see the module docstring).
    A point whose transform leaves the tensor unchanged reuses the baseline's metrics.

    When ``torch.distributed`` is initialised, the grid is split across the ranks (whole
    tensors per rank if ``stop_below`` is set), each rank evaluating its points on the full
    validation data, and the results are gathered on every rank: identical to a
    single-process scan when evaluation is deterministic.

    Args:
        model (nn.Module): the model; unchanged afterwards.
        levels (Iterable): the levels, normalized by ``kind`` (sorted, unique).
        evaluate (callable): ``model -> dict of metrics`` (see :func:`make_evaluator`).
        kind (LevelKind): what a level does to a tensor.
        param_names (Sequence[str], optional): tensors to scan, by user-facing name
            (``"fc1.weight"``), any rank; ``"*"`` stands for the defaults,
            :func:`default_parameter_names` (every weight of dim >= 2), which is also what
            ``None`` (the default) scans. ``["*", "fc1.bias"]`` adds a bias to them.
        stop_below (float, optional): per tensor, stop at the first level (in order of
            increasing damage) whose ``stop_metric`` falls below this; later levels are
            absent from the result.
        stop_metric (str): the metric ``stop_below`` watches. Default: ``"accuracy"``.
        progress (bool): show a tqdm bar over the points (rank 0 only). Default: True.
        distributed (bool, optional): ``None`` (default) splits the grid when
            ``torch.distributed`` is initialised; ``False`` never does.
        group (ProcessGroup, optional): the process group; default the world.

    Returns:
        A :class:`ScanResult` ``{parameter: {level: metrics}}``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 2))
        >>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        >>> ev = lambda m: {"loss": float(nn.functional.cross_entropy(m(x), y))}
        >>> r = scan(net, [0.0, 0.5], ev, kind=SparsityLevels(), progress=False)
        >>> list(r["0.weight"]), r["0.weight"][0.0] == r.baseline
        ([0.0, 0.5], True)
    """
    if not isinstance(kind, LevelKind):
        raise TypeError(f"kind must be a LevelKind, got {type(kind).__name__}")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    if isinstance(param_names, str):
        raise TypeError("param_names must be a sequence of names, not a str")
    levels = kind.normalize(levels)
    names = expand_default_names(model, ["*"] if param_names is None else list(param_names))
    errors, targets, seen = [], [], {}
    for qualified in names:
        try:
            module, name = resolve_tensor(model, qualified)
        except ValueError as err:
            errors.append(str(err))
            continue
        key = (id(module), name)
        if key in seen:
            errors.append(f"duplicate: {qualified!r} names the same tensor as {seen[key]!r}")
        seen[key] = qualified
        targets.append((module, name))
    if errors:
        raise ValueError("cannot scan: " + "; ".join(errors))
    if stop_below is not None and not _is_real(stop_below):
        raise TypeError(f"stop_below must be a number, got {stop_below!r}")

    rank, world = _world(distributed, group)
    order = list(range(len(levels))) if kind.damage_increases else list(range(len(levels)))[::-1]
    mine = _my_points(len(targets), order, rank, world, by_tensor=stop_below is not None)

    timings = {"total": 0.0, "evaluate": 0.0, "transform": 0.0, "baseline": 0.0, "evaluations": 0}
    start = time.perf_counter()
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    local: list[tuple[int, int, Metrics]] = []
    bar = tqdm(
        total=len(mine), desc=f"{kind.name} scan", disable=not progress or rank != 0, leave=False
    )
    try:
        baseline = _evaluate(evaluate, model)
        timings["baseline"] = time.perf_counter() - start
        logger.info(
            "%s scan: baseline %s; %d points on rank %d of %d",
            kind.name,
            baseline,
            len(mine),
            rank,
            world,
        )
        if stop_below is not None and stop_metric not in baseline:
            raise ValueError(
                f"stop_metric={stop_metric!r} is not among the metrics {sorted(baseline)}"
            )
        for t, points in itertools.groupby(mine, key=lambda p: p[0]):
            points = list(points)
            module, name = targets[t]
            slot = _Slot(module, name)
            try:
                for done, (_, li) in enumerate(points):
                    tick = time.perf_counter()
                    with torch.no_grad():
                        new = kind.transform(slot.value, slot.keep, levels[li])
                    tock = time.perf_counter()
                    timings["transform"] += tock - tick
                    if _same_bits(new, slot.value):
                        metrics = dict(baseline)
                    else:
                        slot.write(new)
                        del new
                        metrics = _evaluate(evaluate, model)
                        timings["evaluate"] += time.perf_counter() - tock
                        timings["evaluations"] += 1
                    local.append((t, li, metrics))
                    bar.update(1)
                    logger.debug(
                        "%s at %s=%s: %s", names[t], kind.name, _format_level(levels[li]), metrics
                    )
                    if stop_below is not None and metrics[stop_metric] < stop_below:
                        skipped = len(points) - done - 1
                        if skipped:
                            logger.info(
                                "%s: %s %.4g < %.4g at %s=%s; skipping %d more levels",
                                names[t],
                                stop_metric,
                                metrics[stop_metric],
                                stop_below,
                                kind.name,
                                _format_level(levels[li]),
                                skipped,
                            )
                        bar.update(skipped)
                        break
            finally:
                slot.restore()
    finally:
        bar.close()
        for m, mode in modes:
            m.training = mode
    timings["total"] = time.perf_counter() - start

    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local, group=group)
        local = [p for part in gathered for p in part]
    found = {(t, li): m for t, li, m in local}
    data = {
        names[t]: {levels[li]: found[(t, li)] for li in range(len(levels)) if (t, li) in found}
        for t in range(len(targets))
    }
    return ScanResult(
        data,
        kind=kind.name,
        axis_label=kind.axis_label,
        baseline=baseline,
        baseline_label=kind.baseline_label,
        timings=timings,
    )
