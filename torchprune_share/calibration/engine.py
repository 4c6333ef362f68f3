"""The calibration pass: run the model on calibration batches and gather each target's statistics.

Sequential by default (as GPTQ): targets are grouped by execution order (layers reading
the same input tensor, such as attention's query/key/value, form one group); each group's
statistics are recorded with every earlier group already compressed (staged, see
:class:`~torchprune_share.calibration.staging.Staging`), so later layers see, and
compensate, the errors of earlier ones. Every batch's forward runs once, paused at each
group until it is compressed (:mod:`~torchprune_share.calibration.lockstep`); beyond
:data:`LOCKSTEP_MAX_BATCHES` batches, each group runs the forward (or only its block, on
recorded inputs: :mod:`~torchprune_share.calibration.replay`) and stops it as soon as the
group's last layer has read its input. Nothing is committed here: the caller's
``compress`` callback returns the staged value and keeps its own plan, and every staged
value is undone at the end, also when anything raises.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from ..config import (
    DEFAULT_ALGORITHM,
    DEFAULT_ASYMMETRIC,
    DEFAULT_AUGMENT,
    DEFAULT_SEQUENTIAL,
    default_augment,
)
from ..kmeans.validation import check_int
from ..state import TensorState
from .augment import augmented_batches, token_ids
from .hessian import HessianAccumulator
from .layers import COUNTS, input_rows, is_plain_linear, layer_kind, padding_mask, token_counts
from .lockstep import Paused, run_lockstep
from .matrix import Statistics
from .replay import Clock, Recorded, plan_anchors, record_inputs, replay
from .staging import Staging

__all__ = ["Target", "as_batches", "calibrate", "default_forward"]

logger = logging.getLogger(__name__)

Forward = Callable[[nn.Module, Any], Any]
# compress(target, stats) -> the staged value, or (value, {other tensor of the module: value})
Compress = Callable[["Target", "Statistics | None"], "Tensor | tuple[Tensor, dict[str, Tensor]]"]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, else ``model(batch)``.

    Example:
        >>> default_forward(nn.Identity(), (torch.ones(1),))
        tensor([1.])
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@dataclass
class Target:
    """One tensor to compress: ``module.<name>``, known in the model as ``qualified``."""

    qualified: str
    module: nn.Module
    name: str
    kind: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.kind = layer_kind(self.module, self.name)


def as_batches(calibration: object) -> Iterable[Any]:
    """The calibration batches, re-iterable (a one-shot iterator is read into a list).

    Raises:
        TypeError: ``calibration`` is not iterable.
        ValueError: it holds no batch.

    Example:
        >>> len(as_batches(iter([1, 2])))
        2
    """
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise TypeError(
            "calibration must be an iterable of model inputs (a DataLoader, a list of "
            f"batches), got {type(calibration).__name__}"
        )
    if iter(calibration) is calibration:
        calibration = list(calibration)
    for _ in calibration:  # type: ignore[union-attr]
        return calibration  # type: ignore[return-value]
    raise ValueError("calibration holds no batch; give at least one model input")


class _Stop(BaseException):
    """Ends a forward early; a BaseException so that user code's ``except Exception`` lets it by."""


def _hook_input(args: tuple, kwargs: dict) -> Tensor | None:
    if args:
        return args[0]
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    return None


def _once(run: Callable[[Any], Any], batch: Any) -> None:
    try:
        run(batch)
    except _Stop:
        pass


def _run(model: nn.Module, batches: Iterable[Any], run: Callable[[Any], Any]) -> None:
    seen = 0
    for batch in batches:
        seen += 1
        _once(run, batch)
    if seen == 0:
        raise ValueError("calibration is exhausted: it gave no batch on a second pass")


def _discover(
    model: nn.Module, batches: Iterable[Any], forward: Forward, targets: list[Target]
) -> tuple[list[list[Target]], bool, Clock]:
    """Group the reached targets by execution order; tell whether any runs twice a forward;
    time when each module is entered (for :func:`~.replay.plan_anchors`)."""
    first: dict[int, tuple[int, int]] = {}
    calls: dict[int, int] = {}
    handles = []
    alive: list[Tensor] = []  # ids of inputs must stay unique while they are compared

    def hook(t: Target) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[id(t)] = calls.get(id(t), 0) + 1
            if id(t) not in first:
                x = _hook_input(args, kwargs)
                key = id(x) if x is not None else -len(first) - 1
                if x is not None:
                    alive.append(x)
                first[id(t)] = (len(first), key)

        return record

    for t in targets:
        handles.append(t.module.register_forward_pre_hook(hook(t), with_kwargs=True))
    try:
        with torch.no_grad(), Clock() as clock:
            _run(model, [next(iter(batches))], lambda b: forward(model, b))
    finally:
        for h in handles:
            h.remove()
    reached = sorted((t for t in targets if id(t) in first), key=lambda t: first[id(t)][0])
    groups: list[list[Target]] = []
    for t in reached:
        if groups and first[id(groups[-1][0])][1] == first[id(t)][1]:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups, any(n > 1 for n in calls.values()), clock


class _Recorder:
    """Forward pre-hooks gathering one group's statistics over the calibration batches.

    With ``staging`` holding compressed layers, each batch runs twice: once with the
    originals shown (recording the dense model's inputs) and once compressed; the pairs
    give both ``H̃`` and the cross term of :func:`~.matrix.dense_target`.
    """

    def __init__(
        self,
        group: list[Target],
        early_stop: bool,
        staging: Staging | None,
        own_statistics: bool = True,
    ) -> None:
        self.group, self.early_stop, self.staging = group, early_stop, staging
        # Whether each target's statistics are its own (not shared with layers reading the
        # same input): only then can its cross term be gathered times its weight.
        self.own_statistics = own_statistics
        self.acc: dict[int, Any] = {}
        self.dense: dict[int, list[Tensor]] = {}
        self.seen: set[int] = set()
        self.mode = "staged"
        self.mask: Tensor | None = None  # the batch's real positions (padding_mask)

    def hook(self, t: Target) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _hook_input(args, kwargs)
            if x is not None:
                self._add(t, module, x)
            self.seen.add(id(t))
            if self.early_stop and len(self.seen) == len(self.group):
                raise _Stop

        return record

    def _add(self, t: Target, module: nn.Module, x: Tensor) -> None:
        if t.kind == COUNTS:
            if self.mode == "staged":
                counts = token_counts(module, x, self.mask)
                self.acc[id(t)] = counts if id(t) not in self.acc else self.acc[id(t)] + counts
            return
        rows = input_rows(module, x, self.mask)
        if self.mode == "dense":
            self.dense.setdefault(id(t), []).append(rows)
            return
        if id(t) not in self.acc:
            self.acc[id(t)] = HessianAccumulator(rows.shape[1], rows.device, self._weight(t))
        queue = self.dense.get(id(t))
        self.acc[id(t)].add(rows, queue.pop(0) if queue else None)

    def _weight(self, t: Target) -> Tensor | None:
        """The weight the cross term may be premultiplied by: the value that the compress
        step will read (:func:`~.matrix.dense_target` checks that it is)."""
        if not self.own_statistics or not is_plain_linear(t.module):
            return None
        return getattr(t.module, t.name).detach()

    def run(self, model: nn.Module, forward: Forward, batch: Any) -> None:
        self.mask = padding_mask(batch)
        if self.staging is not None and len(self.staging):
            self.mode, self.dense = "dense", {}
            self.seen.clear()
            with self.staging.suspend():
                _once(lambda b: forward(model, b), batch)
        self.mode = "staged"
        self.seen.clear()
        forward(model, batch)

    def statistics(self) -> dict[int, Statistics]:
        out = {}
        for t in self.group:
            a = self.acc.get(id(t))
            if a is None:
                continue
            if t.kind == COUNTS:
                out[id(t)] = Statistics(importance=a.unsqueeze(1).expand(t.module.weight.shape))
            else:
                out[id(t)] = Statistics(
                    hessian=a.hessian(),
                    cross=a.cross(),
                    mean=a.mean(),
                    reference_mean=a.reference_mean(),
                    cross_weight=a.cross_weight,
                )
        return out


def _statistics(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Forward,
    group: list[Target],
    early_stop: bool,
    staging: Staging | None = None,
    replayed: tuple[nn.Module, Recorded] | None = None,
) -> dict[int, Statistics]:
    """Hessians (or token counts) of ``group`` over all batches (or over the recorded
    inputs of an anchor, ``replayed``)."""
    rec = _Recorder(group, early_stop, staging)
    handles = [t.module.register_forward_pre_hook(rec.hook(t), with_kwargs=True) for t in group]
    try:
        with torch.no_grad():
            if replayed is None:
                _run(model, batches, lambda b: rec.run(model, forward, b))
            else:
                for call, mask in replay(*replayed):
                    rec.seen.clear()
                    rec.mask = mask
                    _once(lambda c: c(), call)
    finally:
        for h in handles:
            h.remove()
    return rec.statistics()


def _fisher(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    targets: list[Target],
) -> dict[int, Statistics]:
    """Empirical Fisher ``Σ_batches g²`` of each target's effective tensor."""
    sums: dict[int, Tensor] = {}
    leaves = _leaf_tensors(targets)
    flags = [p.requires_grad for p in leaves]
    for p in leaves:
        p.requires_grad_(True)
    try:
        for batch in batches:
            _fisher_batch(model, batch, loss_fn, targets, sums)
    finally:
        for p, flag in zip(leaves, flags):
            p.requires_grad_(flag)
    return {i: Statistics(importance=s) for i, s in sums.items()}


def _leaf_tensors(targets: list[Target]) -> list[Tensor]:
    return [TensorState.of(t.module, t.name).parameter() for t in targets]


def _fisher_batch(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    targets: list[Target],
    sums: dict[int, Tensor],
) -> None:
    used: list[tuple[Target, Tensor]] = []
    handles = []

    def hook(t: Target) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple) -> None:
            w = getattr(module, t.name)
            if not any(w is u for _, u in used):
                used.append((t, w))

        return record

    for t in targets:
        handles.append(t.module.register_forward_pre_hook(hook(t)))
    try:
        with torch.enable_grad(), parametrize.cached():
            loss = loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(
                    "loss_fn must return a scalar tensor, got "
                    + (
                        f"shape {tuple(loss.shape)}"
                        if isinstance(loss, Tensor)
                        else type(loss).__name__
                    )
                )
            grads = torch.autograd.grad(loss.reshape(()), [w for _, w in used], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    per_target: dict[int, Tensor] = {}
    for (t, _), g in zip(used, grads):
        if g is not None:
            per_target[id(t)] = g if id(t) not in per_target else per_target[id(t)] + g
    for i, g in per_target.items():
        sq = g.detach().to(torch.float32).square()
        sums[i] = sq if i not in sums else sums[i] + sq


# Lockstep holds every batch's activations at once; beyond this many batches the
# groups replay their block instead (see replay.py), one batch at a time.
LOCKSTEP_MAX_BATCHES = 128


def _compress_group(
    group: list[Target], stats: dict[int, Statistics], compress: Compress, staging: Staging | None
) -> None:
    """Compress each target of ``group`` and stage the values (when ``staging`` is given)."""
    for t in group:
        value = compress(t, stats.get(id(t)))
        value, others = value if isinstance(value, tuple) else (value, {})
        if staging is not None:
            staging.stage(t.module, t.name, value)
            for name, other in others.items():
                staging.stage(t.module, name, other)


def _linear(group: list[Target]) -> list[Target]:
    """The ``nn.Linear`` targets of a lockstep group.

    Every layer of a group reads the same input, so these (attention's query, key and
    value) have the same ``H``: it is gathered, centred and factorised once, for the
    first of them.
    """
    return [t for t in group if t.kind != COUNTS and is_plain_linear(t.module)]


def _lockstep(
    model: nn.Module,
    batches: list[Any],
    forward: Forward,
    groups: list[list[Target]],
    compress: Compress,
    staging: Staging,
    progress: bool,
    dense: nn.Module | None = None,
) -> None:
    """Sequential calibration with every batch's forward run once (:mod:`.lockstep`).

    With ``dense`` (an untouched copy of ``model``, for ``asymmetric``) every batch also
    runs through the copy, paused at the same groups: its inputs are the references of
    the cross term.
    """
    masks = [padding_mask(b) for b in batches]
    bar = tqdm(total=len(groups), desc="calibrating", disable=not progress, leave=False)
    modules = [[t.module for t in g] for g in groups]
    runs: list[tuple[nn.Module, Any]] = [(model, b) for b in batches]
    if dense is not None:
        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        twin = dict(dense.named_modules(remove_duplicate=False))
        modules = [ms + [twin[names[id(m)]] for m in ms] for ms in modules]
        runs += [(dense, b) for b in batches]

    def on_group(gi: int, paused: Paused) -> None:
        group = groups[gi]
        first, *same = _linear(group) or [None]
        gathered = [t for t in group if t not in same]
        rec = _Recorder(gathered, early_stop=False, staging=None, own_statistics=not same)
        # Before anything is staged the dense inputs are the model's own: no cross term.
        refs = dense is not None and len(staging) > 0
        for b, x in enumerate(paused.inputs[: len(batches)]):  # in batch order: deterministic
            ref = paused.inputs[len(batches) + b] if refs else None
            if x is None or (refs and ref is None):
                continue
            rec.mask = masks[b]
            if ref is not None:
                rec.mode = "dense"
                for t in gathered:
                    rec._add(t, t.module, ref)
                rec.mode = "staged"
            for t in gathered:
                rec._add(t, t.module, x)
        stats = rec.statistics()
        if first is not None and id(first) in stats:
            stats.update(dict.fromkeys(map(id, same), stats[id(first)]))
        _compress_group(group, stats, compress, staging)
        bar.update()

    try:
        run_lockstep(runs, lambda r: forward(*r), modules, _hook_input, on_group)
    finally:
        bar.close()


def _augmented(batches: list[Any], copies: int, seed: int) -> list[Any]:
    """``batches`` with the synthetic rows of :mod:`.augment`, packed by length, logged.

    Each batch is a thread in lockstep: the rows are cut into fewer, larger batches where
    needed to keep the count within :data:`LOCKSTEP_MAX_BATCHES` (or the real count).
    """
    limit = max(LOCKSTEP_MAX_BATCHES, len(batches))
    out = augmented_batches(batches, copies, torch.Generator().manual_seed(seed), limit)
    if not copies:
        return out
    if len(out) == len(batches) and all(a is b for a, b in zip(out, batches)):
        logger.info("augment=%d: no batch holds token ids; calibrating on the real ones", copies)
    else:
        rows = sum(int(ids.shape[0]) for ids in map(token_ids, out) if ids is not None)
        logger.info("augment=%d: %d token sequences in %d batches", copies, rows, len(out))
    return out


def _missing(targets: list[Target], reached: set[int], strict: bool, what: str) -> None:
    missing = [t.qualified for t in targets if id(t) not in reached]
    if not missing:
        return
    if strict:
        raise ValueError(
            f"no calibration batch reaches {missing} ({what}); check forward/loss_fn, or pass "
            "strict=False to compress them data-free"
        )
    logger.warning("%s: not reached by calibration (%s); compressed data-free", missing, what)


def calibrate(
    model: nn.Module,
    targets: list[Target],
    calibration: Iterable[Any],
    compress: Compress,
    *,
    forward: Forward | None = None,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
    sequential: bool = DEFAULT_SEQUENTIAL,
    asymmetric: bool = DEFAULT_ASYMMETRIC,
    augment: int | None = DEFAULT_AUGMENT,
    augment_seed: int = 0,
    strict: bool = True,
    progress: bool = True,
) -> None:
    r"""Gather statistics of every target and hand them to ``compress``, layer group by group.

    Args:
        model (nn.Module): the model (left exactly as it was).
        targets (list[Target]): the tensors to compress.
        calibration (Iterable): batches of model inputs (see :func:`as_batches`).
        compress (Callable): ``compress(target, stats)`` -> the compressed value to stage;
            ``stats`` is ``None`` for a tensor compressed data-free.
        forward (Callable, optional): ``forward(model, batch)``; default
            :func:`default_forward`.
        loss_fn (Callable, optional): ``loss_fn(model, batch)`` -> scalar loss; needed by
            ``algorithm="fisher"``.
        algorithm (str): ``"hessian"``, ``"diagonal"`` or ``"fisher"``.
        sequential (bool): record each group after the earlier ones are compressed.
        asymmetric (bool): with ``sequential``, fit each layer to the dense model's
            outputs (not to its own on the compressed inputs), so it also corrects the
            errors of the earlier layers; every batch also runs through a dense copy of
            the model (twice the model's memory). Beyond
            :data:`LOCKSTEP_MAX_BATCHES` batches it is turned off, with a log line.
        augment (int, optional): for ``"hessian"`` and ``"diagonal"``, synthetic token
            sequences per real one, their tokens drawn from the calibration tokens
            (:mod:`.augment`); batches without token ids are not augmented. ``None``:
            sharing's default (:func:`~torchprune_share.config.default_augment`; the
            callers in :mod:`.apply` pass the count for what they compress).
        augment_seed (int): seed of the synthetic tokens.
        strict (bool): a target no batch reaches raises ``ValueError``; else it is
            compressed data-free, with a log line.
        progress (bool): show a tqdm bar over the layer groups.
    """
    augment = check_int("augment", default_augment(augment, pruning=False), 0)
    if isinstance(augment_seed, bool) or not isinstance(augment_seed, int):
        raise TypeError(f"augment_seed must be an int, got {type(augment_seed).__name__}")
    forward = forward if forward is not None else default_forward
    batches = as_batches(calibration)
    for t in targets:
        if t.kind is None:
            logger.info(
                "%s: no calibrated algorithm for this tensor; compressed data-free", t.qualified
            )
    usable = [t for t in targets if t.kind is not None]
    if algorithm == "fisher":
        if loss_fn is None:
            raise ValueError('algorithm="fisher" needs loss_fn(model, batch) -> scalar loss')
        stats = _fisher(model, batches, loss_fn, usable)
        _missing(usable, set(stats), strict, "the loss has no gradient for them")
        for t in targets:
            compress(t, stats.get(id(t)))
        return
    groups, repeated, clock = _discover(model, batches, forward, usable)
    _missing(usable, {id(t) for g in groups for t in g}, strict, "no forward reads them")
    reached = {id(t) for g in groups for t in g}
    for t in targets:
        if id(t) not in reached:
            compress(t, None)
    if not sequential:
        groups = [[t for g in groups for t in g]]
    staging = Staging()
    try:
        # Chained: each group's inputs come from the compressed groups before it, and a
        # forward can be paused (or replayed from a block) at each group.
        chained = sequential and not repeated
        plan: list[nn.Module | None] = [None] * len(groups)
        batch_list = list(batches)
        real = len(batch_list)
        batch_list = _augmented(batch_list, augment, augment_seed)
        batches = batch_list
        if chained and real <= LOCKSTEP_MAX_BATCHES:
            # The dense references come from a copy, paused beside the model.
            dense = copy.deepcopy(model) if asymmetric else None
            _lockstep(model, batch_list, forward, groups, compress, staging, progress, dense)
            return
        if chained and asymmetric:
            logger.info(
                "asymmetric calibration runs the forwards in lockstep beside a dense copy, "
                "for at most %d batches; with %d, each layer is fitted to its own outputs",
                LOCKSTEP_MAX_BATCHES,
                real,
            )
            asymmetric = False
        if chained:
            plan = plan_anchors(model, [[t.module for t in g] for g in groups], clock)
        anchor_inputs: tuple[nn.Module | None, Recorded | None] = (None, None)
        for group, anchor in tqdm(
            list(zip(groups, plan)), desc="calibrating", disable=not progress, leave=False
        ):
            if anchor is not None and anchor_inputs[0] is not anchor:
                run = lambda b: forward(model, b)  # noqa: E731
                anchor_inputs = (anchor, record_inputs(batches, run, anchor, padding_mask))
            recorded = anchor_inputs[1] if anchor is not None else None
            stats = _statistics(
                model,
                batches,
                forward,
                group,
                early_stop=not repeated,
                staging=staging if sequential and asymmetric else None,
                replayed=(anchor, recorded)
                if anchor is not None and recorded is not None
                else None,
            )
            _compress_group(group, stats, compress, staging if sequential else None)
    finally:
        staging.restore()
