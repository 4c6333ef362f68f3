"""Policies: which tensors to prune or share, how much, and when (the seed's LevelPruner, Quantizer).

Policy objects take configs, validated when built and again against a model before anything
changes; the mechanisms they drive (:func:`~torchprune_share.level_prune`,
:func:`~torchprune_share.register_weight_sharing`, :func:`~torchprune_share.recluster`)
take tensors. :func:`recommend_sparsities` and :func:`recommend_bits` turn a sensitivity
scan into their options.
"""

from __future__ import annotations

import logging
import numbers
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .analysis import ScanResult, default_parameter_names, resolve_tensor
from .calibration.apply import (
    PruneRequest,
    ShareRequest,
    check_calibration_settings,
    prune_calibrated,
    share_calibrated,
)
from .parametrizations import GRANULARITIES, PruningMask, WeightSharing, get_reparametrization
from .pruning import apply_keep_mask, compressible_state, level_mask, level_prune
from .schedules import ConstantSchedule, SparsitySchedule
from .sharing import INITS, METHODS, recluster, register_weight_sharing

__all__ = ["LevelPruner", "Quantizer", "recommend_bits", "recommend_sparsities"]

logger = logging.getLogger(__name__)

DEFAULT = "*"


def _entries(options: object, what: str) -> list[tuple[Any, ...]]:
    """Options as a list of tuples: from ``{name: value}`` or ``[[name, value, ...], ...]``."""
    if isinstance(options, Mapping):
        return [(k, *(v if isinstance(v, tuple) else (v,))) for k, v in options.items()]
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(
            f"{what} options must be a list of [name, value] pairs or a dict, "
            f"got {type(options).__name__}"
        )
    out = []
    for entry in options:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence):
            raise TypeError(f"{what} options: each entry must be [name, value], got {entry!r}")
        out.append(tuple(entry))
    return out


def _raise_bad(what: str, bad: list[str]) -> None:
    if bad:
        raise ValueError(
            f"{what} options have {len(bad)} bad entries (nothing applied): " + "; ".join(bad)
        )


def _check_names(entries: list[tuple[Any, ...]], bad: list[str]) -> None:
    names = [e[0] if e else None for e in entries]
    for name in names:
        if not isinstance(name, str):
            bad.append(f"{name!r}: a name must be a str such as 'fc1.weight' or '*'")
    dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dupes:
        bad.append(f"duplicate names {dupes}")


def _resolve_all(
    model: nn.Module, names: Sequence[str], what: str
) -> dict[str, tuple[nn.Module, str]]:
    """Resolve every explicit name and the ``"*"`` default; raise listing all unknown names."""
    bad, found, seen = [], {}, {}
    for name in names:
        if name == DEFAULT:
            continue
        try:
            found[name] = resolve_tensor(model, name)
        except ValueError as err:
            bad.append(str(err))
            continue
        key = (id(found[name][0]), found[name][1])
        if key in seen:
            bad.append(f"duplicate: {name!r} names the same tensor as {seen[key]!r}")
        seen[key] = name
    _raise_bad(what, bad)
    return found


class LevelPruner:
    r"""Level (magnitude) pruning of named tensors to per-tensor sparsities, on a schedule.

    Sparsities are fractions of each tensor's *total* size (entries already pruned count).
    The first :meth:`prune` applies :func:`~torchprune_share.level_prune`; masks are
    parametrizations, so the weights stay exactly zero through any optimizer (momentum,
    weight decay) and later calls do nothing until the target grows (a schedule) or
    ``update_masks=True`` recomputes them.

    Args:
        options: ``[[name, sparsity], ...]`` or ``{name: sparsity}``; a sparsity is a
            float in [0, 1] or a :class:`~torchprune_share.schedules.SparsitySchedule`
            (e.g. :class:`~torchprune_share.schedules.AGPSchedule`). The name ``"*"`` sets a
            default for every weight of dim >= 2 not named otherwise. Names and values are
            checked here (duplicates, ranges) and against the model before anything is
            pruned (unknown names); a ``ValueError`` lists every bad entry.
        model (nn.Module, optional): the model, to check names now and for :meth:`step`.

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> pruner = LevelPruner([["0.weight", 0.5], ["2.weight", 0.8]])
        >>> _ = pruner.prune(model=net, update_masks=False)
        >>> int((net[0].weight == 0).sum()), int((net[2].weight == 0).sum())
        (50, 16)
    """

    def __init__(
        self,
        options: Sequence[Sequence[Any]] | Mapping[str, Any],
        *,
        model: nn.Module | None = None,
        algorithm: str = "hessian",
        damping: float = 0.01,
    ) -> None:
        check_calibration_settings(algorithm, damping)
        self.algorithm, self.damping = algorithm, float(damping)
        entries = _entries(options, "LevelPruner")
        bad: list[str] = []
        _check_names(entries, bad)
        self.options: dict[str, SparsitySchedule] = {}
        for entry in entries:
            if len(entry) != 2:
                bad.append(f"{entry!r}: expected [name, sparsity]")
                continue
            name, value = entry
            if not isinstance(name, str):
                continue  # reported by _check_names
            if isinstance(value, SparsitySchedule):
                self.options[name] = value
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                if 0.0 <= float(value) <= 1.0:
                    self.options[name] = ConstantSchedule(float(value))
                else:
                    bad.append(f"{name!r}: sparsity {value} is not in [0, 1]")
            else:
                bad.append(
                    f"{name!r}: sparsity must be a float in [0, 1] or a schedule, got {value!r}"
                )
        _raise_bad("LevelPruner", bad)
        self.model = model
        self.last_step: int | None = None
        self._applied: dict[str, tuple[Any, float]] = {}
        self._targets_cache: tuple[Any, list] | None = None
        if model is not None:
            self._cached_targets(model)

    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module, str, SparsitySchedule]]:
        """The tensors this pruner acts on in ``model``, with their schedules.

        Args:
            model (nn.Module): the model.

        Returns:
            ``(qualified_name, module, name, schedule)`` tuples: the named tensors in option
            order, then those the ``"*"`` default covers, in model order.

        Raises:
            ValueError: listing every name the model lacks.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
            >>> [(q, s.final) for q, _, _, s in LevelPruner({"1.weight": 0.5, "*": 0.2}).targets(net)]
            [('1.weight', 0.5), ('0.weight', 0.2)]
        """
        found = _resolve_all(model, list(self.options), "LevelPruner")
        out = [(q, *found[q], s) for q, s in self.options.items() if q != DEFAULT]
        if DEFAULT in self.options:
            named = {(id(m), n) for m, n in found.values()}
            for q in default_parameter_names(model):
                module, name = resolve_tensor(model, q)
                if (id(module), name) not in named:
                    out.append((q, module, name, self.options[DEFAULT]))
        return out

    def prune(
        self,
        model: nn.Module | None = None,
        update_masks: bool = False,
        step: int | None = None,
        *,
        calibration: Iterable[Any] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        sequential: bool = True,
        asymmetric: bool = False,
        strict: bool = True,
        progress: bool = True,
    ) -> dict[str, float]:
        r"""Prune every target tensor up to its sparsity at ``step``.

        Without ``calibration`` the smallest magnitudes go (data-free). With it, entries
        are chosen by their effect on each layer's output on the calibration inputs
        (the pruner's ``algorithm``: ``"hessian"``, SparseGPT, which also updates the
        surviving weights to compensate; ``"diagonal"``, the Wanda score
        ``|w| · ‖x‖``; ``"fisher"``, ``Σ g² · w²`` from ``loss_fn``) for ``nn.Linear``,
        ``nn.Conv1d``/``nn.Conv2d`` and ``nn.Embedding`` weights; other tensors are
        pruned by magnitude, with one log line each. Nothing changes if anything fails.

        Args:
            model (nn.Module, optional): the model; default the one given before.
            update_masks (bool): recompute each mask from scratch at its target: from the
                dense ``original`` of a masked tensor (entries pruned earlier can come
                back if they now outweigh kept ones), from the values of a shared one.
                Default: False (keep masks, prune only what the target adds).
            step (int, optional): the training step for schedules; default the last step
                given (0 at first).
            calibration (Iterable, optional): batches of model inputs (a DataLoader, a
                list); a one-shot iterator is read into a list.
            forward (Callable, optional): ``forward(model, batch)`` runs the model on one
                batch; default ``model(**batch)`` for a mapping, ``model(*batch)`` for a
                tuple or list, else ``model(batch)``.
            loss_fn (Callable, optional): ``loss_fn(model, batch)`` -> scalar loss, for
                ``algorithm="fisher"``.
            sequential (bool): record each layer's inputs with the earlier layers already
                pruned (GPTQ-style). Default: True.
            asymmetric (bool): with ``sequential``, fit each layer to the dense model's
                outputs, so that it also corrects the errors of earlier layers (runs each
                batch twice). Default: False.
            strict (bool): raise ``ValueError`` for a target no batch reaches; with
                False it is pruned by magnitude, logged. Default: True.
            progress (bool): show a progress bar over the layer groups. Default: True.

        Returns:
            ``{name: target sparsity}`` at this step.

        Example:
            >>> net = nn.Sequential(nn.Linear(100, 10))
            >>> LevelPruner({"*": 0.9}).prune(net)
            {'0.weight': 0.9}
        """
        model = model if model is not None else self.model
        if not isinstance(model, nn.Module):
            raise TypeError(
                "prune needs the model (prune(model=...) or LevelPruner(..., model=...))"
            )
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise ValueError(f"step must be an int >= 0, got {step!r}")
            self.last_step = int(step)
        self.model = model
        t = self.last_step if self.last_step is not None else 0
        plan, bad, targets = [], [], {}
        for q, module, name, schedule in self._cached_targets(model):
            target = schedule.sparsity(t)
            targets[q] = target
            reparam = get_reparametrization(module, name)
            before = self._applied.get(q)
            if (
                not update_masks
                and before is not None
                and before[1] == target
                and (before[0]() if before[0] is not None else None) is reparam
            ):
                continue  # nothing changed since this pruner last acted: masks persist
            try:
                value, keep = compressible_state(module, name)
            except (TypeError, ValueError) as err:
                bad.append(f"{q!r}: {err}")
                continue
            plan.append((q, module, name, target, value, keep))
        _raise_bad("LevelPruner", bad)
        if calibration is not None:
            if update_masks:
                raise ValueError(
                    "update_masks=True recomputes masks by magnitude; it cannot be combined "
                    "with calibration"
                )
            requests = [PruneRequest(q, m, n, t) for q, m, n, t, _, _ in plan]
            prune_calibrated(
                requests,
                model,
                calibration,
                forward=forward,
                loss_fn=loss_fn,
                algorithm=self.algorithm,
                damping=self.damping,
                sequential=sequential,
                asymmetric=asymmetric,
                strict=strict,
                progress=progress,
            )
            for q, module, name, target, _, _ in plan:
                reparam = get_reparametrization(module, name)
                self._applied[q] = (weakref.ref(reparam) if reparam is not None else None, target)
            return targets
        for q, module, name, target, value, keep in plan:
            want = round(target * value.numel())
            if update_masks:
                self._recompute(module, name, value, keep, want)
            elif want > value.numel() - int(keep.sum()):
                level_prune(module, name, amount=want - (value.numel() - int(keep.sum())))
            reparam = get_reparametrization(module, name)
            self._applied[q] = (weakref.ref(reparam) if reparam is not None else None, target)
        return targets

    def _cached_targets(
        self, model: nn.Module
    ) -> list[tuple[str, nn.Module, str, SparsitySchedule]]:
        """:meth:`targets`, resolved once per model and re-resolved if a module was replaced.

        ``prune`` runs after every optimizer step; resolving names walks the whole model.
        """
        cached = self._targets_cache
        if cached is not None and cached[0]() is model:
            try:
                if all(model.get_submodule(q.rpartition(".")[0]) is m for q, m, _, _ in cached[1]):
                    return cached[1]
            except AttributeError:
                pass
        targets = self.targets(model)
        self._targets_cache = (weakref.ref(model), targets)
        return targets

    @staticmethod
    def _recompute(
        module: nn.Module, name: str, value: torch.Tensor, keep: torch.Tensor, want: int
    ) -> None:
        reparam = get_reparametrization(module, name)
        if isinstance(reparam, PruningMask):
            scores = module.parametrizations[name].original.detach()
            base = torch.ones_like(keep)
        else:  # shared or torch-pruned entries hold no value to come back with
            scores, base = value, keep
        pruned = base.numel() - int(base.sum())
        if want < pruned:
            logger.info("%s: %d entries stay pruned, above the target of %d", name, pruned, want)
        extra = max(want - pruned, 0)
        new_keep = level_mask(scores, base, extra)
        if reparam is None and bool(new_keep.all()):
            return
        apply_keep_mask(module, name, new_keep)

    def step(self, model: nn.Module | None = None, update_masks: bool = False) -> dict[str, float]:
        """Advance the step counter by one (0 at the first call) and :meth:`prune`.

        Args:
            model (nn.Module, optional): the model; default the one given before.
            update_masks (bool): see :meth:`prune`.

        Returns:
            ``{name: target sparsity}`` at the new step.

        Example:
            >>> from torchprune_share.schedules import AGPSchedule
            >>> net = nn.Sequential(nn.Linear(10, 10))
            >>> pruner = LevelPruner({"0.weight": AGPSchedule(0.0, 0.5, 0, 4)}, model=net)
            >>> [round(pruner.step()["0.weight"], 4) for _ in range(5)]
            [0.0, 0.2891, 0.4375, 0.4922, 0.5]
        """
        t = 0 if self.last_step is None else self.last_step + 1
        return self.prune(model, update_masks=update_masks, step=t)

    def state_dict(self) -> dict[str, Any]:
        """The pruner's progress (its step), to resume a schedule.

        Returns:
            ``{"last_step": int or None}``.

        Example:
            >>> pruner = LevelPruner({"*": 0.5})
            >>> _ = pruner.prune(nn.Linear(4, 4), step=7)
            >>> pruner.state_dict()
            {'last_step': 7}
        """
        return {"last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the progress saved by :meth:`state_dict`.

        Args:
            state (Mapping): ``{"last_step": ...}``.

        Example:
            >>> pruner = LevelPruner({"*": 0.5})
            >>> pruner.load_state_dict({"last_step": 7})
            >>> pruner.last_step
            7
        """
        self.last_step = state["last_step"]

    def __repr__(self) -> str:
        return f"LevelPruner({self.options!r})"


_SHARING_KEYS = ("init", "method", "granularity", "channel_axis", "cache_index", "generator")


def _sharing_errors(kwargs: Mapping[str, Any]) -> list[str]:
    bad = []
    unknown = sorted(set(kwargs) - set(_SHARING_KEYS))
    if unknown:
        bad.append(f"unknown settings {unknown} (expected some of {list(_SHARING_KEYS)})")
    checks = (("init", INITS), ("method", METHODS), ("granularity", GRANULARITIES))
    for key, allowed in checks:
        if key in kwargs and kwargs[key] not in allowed:
            bad.append(f"{key} must be one of {allowed}, got {kwargs[key]!r}")
    axis = kwargs.get("channel_axis", 0)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        bad.append(f"channel_axis must be an int, got {axis!r}")
    gen = kwargs.get("generator")
    if gen is not None and not isinstance(gen, torch.Generator):
        bad.append(f"generator must be a torch.Generator, got {type(gen).__name__}")
    return bad


class Quantizer:
    r"""k-means weight sharing of named tensors at per-tensor bit widths.

    :meth:`quantize` registers :func:`~torchprune_share.register_weight_sharing` on each
    tensor, or re-clusters an already shared one (:func:`~torchprune_share.recluster`, the
    seed's "re-train and re-quantize"). Build a new optimizer afterwards: the codebooks are
    new parameters.

    Args:
        options: ``[(name, bits), ...]``, ``[(name, bits, {setting: value}), ...]`` or
            ``{name: bits}``; ``bits`` an int in [1, 16]; ``"*"`` sets a default for every
            weight of dim >= 2 not named otherwise. Checked here and against the model
            before anything changes; a ``ValueError`` lists every bad entry.
        init, method, granularity, channel_axis, cache_index, generator: default sharing
            settings (see :func:`~torchprune_share.register_weight_sharing`), overridden
            per entry by its settings dict.
        model (nn.Module, optional): the model, to check names now.

    Example:
        >>> net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> quantizer = Quantizer(options=[("0.weight", 2), ("2.weight", 3)])
        >>> with torch.no_grad():
        ...     _ = quantizer.quantize(net)
        >>> len(torch.unique(net[0].weight.detach())) <= 4
        True
    """

    def __init__(
        self,
        options: Sequence[Sequence[Any]] | Mapping[str, Any],
        *,
        init: str = "linear",
        method: str = "lloyd",
        granularity: str = "per_tensor",
        channel_axis: int = 0,
        cache_index: bool = True,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
        algorithm: str = "hessian",
        damping: float = 0.01,
    ) -> None:
        check_calibration_settings(algorithm, damping)
        self.algorithm, self.damping = algorithm, float(damping)
        defaults = {
            "init": init,
            "method": method,
            "granularity": granularity,
            "channel_axis": channel_axis,
            "cache_index": cache_index,
            "generator": generator,
        }
        errors = _sharing_errors(defaults)
        if errors:
            raise ValueError("Quantizer settings: " + "; ".join(errors))
        entries = _entries(options, "Quantizer")
        bad: list[str] = []
        _check_names(entries, bad)
        self.options: dict[str, tuple[int, dict[str, Any]]] = {}
        for entry in entries:
            if len(entry) not in (2, 3):
                bad.append(f"{entry!r}: expected (name, bits) or (name, bits, settings)")
                continue
            name, bits = entry[0], entry[1]
            if not isinstance(name, str):
                continue  # reported by _check_names
            settings = entry[2] if len(entry) == 3 else {}
            if (
                isinstance(bits, bool)
                or not isinstance(bits, numbers.Integral)
                or not 1 <= bits <= 16
            ):
                bad.append(f"{name!r}: bits must be an int in [1, 16], got {bits!r}")
                continue
            if not isinstance(settings, Mapping):
                bad.append(f"{name!r}: settings must be a dict, got {settings!r}")
                continue
            bad.extend(f"{name!r}: {e}" for e in _sharing_errors(settings))
            self.options[name] = (int(bits), {**defaults, **settings})
        _raise_bad("Quantizer", bad)
        if model is not None:
            self.targets(model)

    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module, str, int, dict[str, Any]]]:
        """The tensors this quantizer acts on in ``model``, with their widths and settings.

        Args:
            model (nn.Module): the model.

        Returns:
            ``(qualified_name, module, name, bits, settings)`` tuples.

        Raises:
            ValueError: listing every name the model lacks.

        Example:
            >>> q = Quantizer([("0.weight", 4, {"granularity": "per_channel"})])
            >>> [(n, b, s["granularity"]) for n, _, _, b, s in q.targets(nn.Sequential(nn.Linear(4, 2)))]
            [('0.weight', 4, 'per_channel')]
        """
        found = _resolve_all(model, list(self.options), "Quantizer")
        out = [(q, *found[q], *v) for q, v in self.options.items() if q != DEFAULT]
        if DEFAULT in self.options:
            named = {(id(m), n) for m, n in found.values()}
            for q in default_parameter_names(model):
                module, name = resolve_tensor(model, q)
                if (id(module), name) not in named:
                    out.append((q, module, name, *self.options[DEFAULT]))
        return out

    def quantize(
        self,
        model: nn.Module,
        calibration: Iterable[Any] | None = None,
        *,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        sequential: bool = True,
        asymmetric: bool = False,
        strict: bool = True,
        progress: bool = True,
        refits: int = 1,
    ) -> nn.Module:
        r"""Share (or re-cluster) every target tensor of ``model``.

        Every tensor is checked first (name, dtype, finite values, channel axis); on a
        problem a ``ValueError`` lists them all and nothing changes.

        Without ``calibration`` the codebooks minimise the weights' squared error
        (k-means, data-free). With it they minimise each layer's *output* error on the
        calibration inputs (the quantizer's ``algorithm``: ``"hessian"``, a GPTQ-class
        column sweep with error feedback through the input Hessian and least-squares
        codebook refits; ``"diagonal"``, k-means weighted by ``diag H``; ``"fisher"``,
        k-means weighted by ``Σ g²`` of ``loss_fn``) for ``nn.Linear``,
        ``nn.Conv1d``/``nn.Conv2d`` (inputs unfolded) and ``nn.Embedding`` (weighted by
        token counts, or Fisher) weights; any other tensor is shared data-free, with one
        log line. Pruned entries stay zero and the error is compensated only by kept
        weights, so a calibrated pruning followed by a calibrated quantization composes.
        The result is the same parametrization as the data-free path.

        Args:
            model (nn.Module): the model, changed in place.
            calibration (Iterable, optional): batches of model inputs (a DataLoader, a
                list); a one-shot iterator is read into a list.
            forward (Callable, optional): ``forward(model, batch)``; default
                ``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list,
                else ``model(batch)``.
            loss_fn (Callable, optional): ``loss_fn(model, batch)`` -> scalar loss, for
                ``algorithm="fisher"``.
            sequential (bool): record each layer's inputs with the earlier layers already
                shared (GPTQ-style). Default: True.
            asymmetric (bool): with ``sequential``, fit each layer to the dense model's
                outputs, so that it also corrects the errors of earlier layers (runs each
                batch twice). Default: False.
            strict (bool): raise ``ValueError`` for a target no batch reaches; with
                False it is shared data-free, logged. Default: True.
            progress (bool): show a progress bar over the layer groups. Default: True.
            refits (int): sweep + least-squares refit rounds of ``"hessian"``. Default: 1.

        Returns:
            ``model``.

        Example:
            >>> net = nn.Sequential(nn.Linear(16, 8))
            >>> q = Quantizer({"*": 4})
            >>> _ = q.quantize(net)
            >>> _ = q.quantize(net)  # re-clusters the trained values
            >>> net[0].parametrizations.weight.original.numel() <= 16
            True
        """
        bad, plan = [], self.targets(model)
        for q, module, name, _, settings in plan:
            try:
                value, _ = compressible_state(module, name)
            except (TypeError, ValueError) as err:
                bad.append(f"{q!r}: {err}")
                continue
            axis = settings["channel_axis"]
            if settings["granularity"] == "per_channel" and not -value.dim() <= axis < max(
                value.dim(), 1
            ):
                bad.append(f"{q!r}: channel_axis {axis} out of range for a {value.dim()}-D tensor")
        _raise_bad("Quantizer", bad)
        if calibration is not None:
            requests = [ShareRequest(q, m, n, b, s) for q, m, n, b, s in plan]
            share_calibrated(
                requests,
                model,
                calibration,
                forward=forward,
                loss_fn=loss_fn,
                algorithm=self.algorithm,
                damping=self.damping,
                refits=refits,
                sequential=sequential,
                asymmetric=asymmetric,
                strict=strict,
                progress=progress,
            )
            return model
        for q, module, name, bits, settings in plan:
            if isinstance(get_reparametrization(module, name), WeightSharing):
                recluster(module, name, bits=bits, **settings)
            else:
                register_weight_sharing(module, name, bits, **settings)
            logger.debug("%s shared at %d bits", q, bits)
        return model

    def __repr__(self) -> str:
        widths = {q: b for q, (b, _) in self.options.items()}
        return f"Quantizer({widths!r})"


# -- from a scan to options ---------------------------------------------------------------
def _acceptance(
    scan: Mapping[str, Mapping[Any, Mapping[str, float]]],
    max_drop: float,
    metric: str,
    baseline: float | None,
    higher_is_better: bool | None,
) -> tuple[float, bool]:
    if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) or max_drop < 0:
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
) -> list[tuple[str, int]]:
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
        ``[(name, bits), ...]``, the options of a :class:`Quantizer`.

    Example:
        >>> scan = ScanResult({"fc.weight": {2: {"accuracy": 90.0}, 4: {"accuracy": 97.9},
        ...                                  6: {"accuracy": 98.0}}}, baseline={"accuracy": 98.0})
        >>> recommend_bits(scan, max_drop=0.5)
        [('fc.weight', 4)]
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
            out.append((name, chosen))
    return out
