"""Policies: which tensors to prune or share, how much, and when (LevelPruner, Quantizer).

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

from .calibration.apply import PruneRequest, prune_calibrated
from .config import (
    DEFAULT_ALGORITHM,
    DEFAULT_ASYMMETRIC,
    DEFAULT_AUGMENT,
    DEFAULT_DAMPING,
    DEFAULT_SEQUENTIAL,
    calibration_settings,
)
from .names import split
from .options import Problems, check_option_names, option_entries, raise_problems, with_defaults
from .parametrizations import get_reparametrization
from .pruning import apply_keep_mask, compressible_state, level_mask, level_prune
from .quantizer import Quantizer
from .recommend import recommend_bits, recommend_sparsities
from .registration import builds_state
from .schedules import ConstantSchedule, SparsitySchedule
from .state import MASKED, TensorState

__all__ = ["LevelPruner", "Quantizer", "recommend_bits", "recommend_sparsities"]

logger = logging.getLogger(__name__)


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
            pruned (unknown names); one error lists every bad entry
            (``TypeError`` when each is a wrong type, else ``ValueError``).
        model (nn.Module, optional): the model, to check names now and for :meth:`step`.
        algorithm (str): with calibration data, how entries are chosen: ``"hessian"``
            (default, SparseGPT-class), ``"diagonal"`` (Wanda) or ``"fisher"`` (see
            :meth:`prune`).
        damping (float): relative dampening of the calibration Hessian, in (0, 1].
            Default: 0.1.

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
        algorithm: str = DEFAULT_ALGORITHM,
        damping: float = DEFAULT_DAMPING,
    ) -> None:
        self.algorithm, self.damping = calibration_settings(algorithm, damping)
        entries = option_entries(options, "LevelPruner")
        bad = Problems()
        check_option_names(entries, bad)
        self.options: dict[str, SparsitySchedule] = {}
        for entry in entries:
            if len(entry) != 2:
                bad.append(f"{entry!r}: expected [name, sparsity]")
                continue
            name, value = entry
            if not isinstance(name, str):
                continue  # reported by check_option_names
            if isinstance(value, SparsitySchedule):
                self.options[name] = value
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                if 0.0 <= float(value) <= 1.0:
                    self.options[name] = ConstantSchedule(float(value))
                else:
                    bad.append(f"{name!r}: sparsity {value} is not in [0, 1]")
            else:
                bad.type_error(
                    f"{name!r}: sparsity must be a float in [0, 1] or a schedule, got {value!r}"
                )
        raise_problems("LevelPruner", bad)
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
        return with_defaults(model, self.options, "LevelPruner")

    @builds_state
    def prune(
        self,
        model: nn.Module | None = None,
        update_masks: bool = False,
        step: int | None = None,
        *,
        calibration: Iterable[Any] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        sequential: bool = DEFAULT_SEQUENTIAL,
        asymmetric: bool = DEFAULT_ASYMMETRIC,
        augment: int | None = DEFAULT_AUGMENT,
        augment_seed: int = 0,
        strict: bool = True,
        progress: bool = True,
    ) -> dict[str, float]:
        r"""Prune every target tensor up to its sparsity at ``step``.

        Without ``calibration`` the smallest magnitudes go (data-free). With it, entries
        are chosen by their effect on each layer's output on the calibration inputs, by
        the pruner's ``algorithm``: ``"hessian"`` is the SparseGPT sweep (mask chosen per
        block of columns by ``w² / [H⁻¹]ᵢᵢ``, each pruned entry's error compensated by the
        later columns), followed by an exact least-squares refit of the survivors;
        ``"diagonal"`` prunes per output row by the Wanda score ``|w| · ‖x‖``;
        ``"fisher"`` by ``Σ g² · w²`` of ``loss_fn``. ``nn.Linear`` and
        ``nn.Conv1d``/``nn.Conv2d`` weights are calibrated, and ``nn.Embedding`` weights
        with ``"fisher"`` (their other statistics are token counts, zero for most tokens
        of a vocabulary); other tensors are pruned by magnitude with one log line each.
        A shared tensor keeps its codes (only its mask is calibrated). Nothing changes if
        anything fails.

        Args:
            model (nn.Module, optional): the model; default the one given before.
            update_masks (bool): recompute each mask from scratch at its target: from the
                dense ``original`` of a masked tensor (entries pruned earlier can come
                back if they now outweigh kept ones), from the values of a shared one.
                Default: False (keep masks, prune only what the target adds).
            step (int, optional): the training step for schedules; default the last step
                given (0 at first).
            calibration, forward, loss_fn, sequential, asymmetric, augment, augment_seed,
                strict, progress: as in :meth:`~torchprune_share.Quantizer.quantize`;
                ``augment=None`` (the default) is
                :data:`~torchprune_share.config.AUGMENT_PRUNING` (3) rows per real one here.

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
            if isinstance(step, bool) or not isinstance(step, numbers.Integral):
                raise TypeError(f"step must be an int >= 0, got {type(step).__name__}")
            if step < 0:
                raise ValueError(f"step must be an int >= 0, got {step}")
            self.last_step = int(step)
        self.model = model
        t = self.last_step if self.last_step is not None else 0
        plan, bad, targets = [], Problems(), {}
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
                bad.error(f"{q!r}: ", err)
                continue
            plan.append((q, module, name, target, value, keep))
        raise_problems("LevelPruner", bad)
        if calibration is not None:
            if update_masks:
                raise ValueError(
                    "update_masks=True recomputes masks by magnitude; it cannot be combined "
                    "with calibration"
                )
            prune_calibrated(
                [PruneRequest(q, m, n, t) for q, m, n, t, _, _ in plan],
                model,
                calibration,
                algorithm=self.algorithm,
                damping=self.damping,
                forward=forward,
                loss_fn=loss_fn,
                sequential=sequential,
                asymmetric=asymmetric,
                augment=augment,
                augment_seed=augment_seed,
                strict=strict,
                progress=progress,
            )
        for q, module, name, target, value, keep in plan:
            want = round(target * value.numel())
            pruned = value.numel() - int(keep.sum())
            if calibration is None and update_masks:
                self._recompute(module, name, value, keep, want)
            elif calibration is None and want > pruned:
                level_prune(module, name, amount=want - pruned)
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
                if all(model.get_submodule(split(q)[0]) is m for q, m, _, _ in cached[1]):
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
        state = TensorState.of(module, name)
        if state.kind == MASKED:
            scores = state.parameter().detach()
            base = torch.ones_like(keep)
        else:  # shared or torch-pruned entries hold no value to come back with
            scores, base = value, keep
        pruned = base.numel() - int(base.sum())
        if want < pruned:
            logger.info("%s: %d entries stay pruned, above the target of %d", name, pruned, want)
        extra = max(want - pruned, 0)
        new_keep = level_mask(scores, base, extra)
        if not state.compressed and bool(new_keep.all()):
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


# Settings of an option that are no SharingConfig field: how the tensor is held and built.
