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

What a level means lives in :mod:`.levels`, results and plots in :mod:`.results`,
evaluation in :mod:`.evaluation`; this module is the engine (and re-exports them).

Memory is the model plus two copies of the tensor being scanned (its saved value and its
value at the current level); nothing is deep-copied.
Evaluation runs under :func:`torch.inference_mode` with the model in eval mode.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .evaluation import Evaluator, Metrics, evaluate_metrics, make_evaluator
from .levels import BitLevels, LevelKind, PruningMethodLevels, SparsityLevels, is_real
from .names import (
    default_parameter_names,
    expand_default_names,
    named_tensors,
    resolve_tensor,
)
from .pruning import compressible_state
from .results import ScanResult, format_level, scan_to_csv, scan_to_png
from .state import FOREIGN, MASKED, SHARED, TORCH_PRUNED, TensorState

__all__ = [
    "BitLevels",
    "LevelKind",
    "PruningMethodLevels",
    "ScanResult",
    "SparsityLevels",
    "default_parameter_names",
    "expand_default_names",
    "make_evaluator",
    "named_tensors",
    "resolve_tensor",
    "scan",
    "scan_to_csv",
    "scan_to_png",
]

logger = logging.getLogger(__name__)


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


def _resolve_targets(
    model: nn.Module, param_names: Sequence[str] | None
) -> tuple[list[str], list[tuple[nn.Module, str]]]:
    """The names and ``(module, name)`` of the tensors to scan; one error lists every problem."""
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
    return names, targets


class _Run:
    """One scan's state: the levels, the baseline, timings and this rank's results."""

    def __init__(self, kind: LevelKind, levels: list[Any], evaluate: Evaluator, model: nn.Module):
        self.kind, self.levels, self.evaluate, self.model = kind, levels, evaluate, model
        self.timings: dict[str, float] = dict.fromkeys(
            ("total", "evaluate", "transform", "baseline", "evaluations"), 0.0
        )
        self.timings["evaluations"] = 0
        self.results: list[tuple[int, int, Metrics]] = []
        self.baseline: Metrics = {}

    def start_baseline(
        self, n_points: int, rank: int, world: int, stop: tuple[float, str] | None
    ) -> None:
        """Evaluate the unchanged model (the metrics unchanged points reuse)."""
        tick = time.perf_counter()
        self.baseline = evaluate_metrics(self.evaluate, self.model)
        self.timings["baseline"] = time.perf_counter() - tick
        logger.info(
            "%s scan: baseline %s; %d points on rank %d of %d",
            self.kind.name,
            self.baseline,
            n_points,
            rank,
            world,
        )
        if stop is not None and stop[1] not in self.baseline:
            raise ValueError(
                f"stop_metric={stop[1]!r} is not among the metrics {sorted(self.baseline)}"
            )

    def tensor(
        self,
        t: int,
        qualified: str,
        slot: _Slot,
        points: list[tuple[int, int]],
        stop: tuple[float, str] | None,
        bar: Any,
    ) -> None:
        """Evaluate one tensor's points in order; stop early below ``stop`` (limit, metric)."""
        for done, (_, li) in enumerate(points):
            level = self.levels[li]
            tick = time.perf_counter()
            with torch.no_grad():
                new = self.kind.transform(slot.value, slot.keep, level)
            tock = time.perf_counter()
            self.timings["transform"] += tock - tick
            if _same_bits(new, slot.value):
                metrics = dict(self.baseline)
            else:
                slot.write(new)
                del new
                metrics = evaluate_metrics(self.evaluate, self.model)
                self.timings["evaluate"] += time.perf_counter() - tock
                self.timings["evaluations"] += 1
            self.results.append((t, li, metrics))
            bar.update(1)
            name = self.kind.name
            logger.debug("%s at %s=%s: %s", qualified, name, format_level(level), metrics)
            if stop is not None and metrics[stop[1]] < stop[0]:
                skipped = len(points) - done - 1
                if skipped:
                    logger.info(
                        "%s: %s %.4g < %.4g at %s=%s; skipping %d more levels",
                        qualified,
                        stop[1],
                        metrics[stop[1]],
                        stop[0],
                        name,
                        format_level(level),
                        skipped,
                    )
                bar.update(skipped)
                return


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
    names, targets = _resolve_targets(model, param_names)
    if stop_below is not None and not is_real(stop_below):
        raise TypeError(f"stop_below must be a number, got {stop_below!r}")
    stop = None if stop_below is None else (float(stop_below), stop_metric)

    rank, world = _world(distributed, group)
    order = list(range(len(levels))) if kind.damage_increases else list(range(len(levels)))[::-1]
    mine = _my_points(len(targets), order, rank, world, by_tensor=stop is not None)
    run = _Run(kind, levels, evaluate, model)
    start = time.perf_counter()
    bar = tqdm(
        total=len(mine), desc=f"{kind.name} scan", disable=not progress or rank != 0, leave=False
    )
    with _eval_mode(model), bar:
        run.start_baseline(len(mine), rank, world, stop)
        for t, points in itertools.groupby(mine, key=lambda p: p[0]):
            slot = _Slot(*targets[t])
            try:
                run.tensor(t, names[t], slot, list(points), stop, bar)
            finally:
                slot.restore()
    run.timings["total"] = time.perf_counter() - start
    found = _gather(run.results, world, group)
    data = {
        names[t]: {levels[li]: found[(t, li)] for li in range(len(levels)) if (t, li) in found}
        for t in range(len(targets))
    }
    return ScanResult(
        data,
        kind=kind.name,
        axis_label=kind.axis_label,
        baseline=run.baseline,
        baseline_label=kind.baseline_label,
        timings=run.timings,
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block; every module's own training flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _gather(
    local: list[tuple[int, int, Metrics]], world: int, group: Any
) -> dict[tuple[int, int], Metrics]:
    """Every rank's ``(tensor, level) -> metrics``, on every rank."""
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local, group=group)
        local = [p for part in gathered for p in part]
    return {(t, li): m for t, li, m in local}
