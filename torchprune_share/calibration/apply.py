"""Calibrated sharing and pruning of many tensors: plan under calibration, then commit.

:func:`share_calibrated` and :func:`prune_calibrated` are what
:meth:`~torchprune_share.Quantizer.quantize` and :meth:`~torchprune_share.LevelPruner.prune`
run when given calibration data. Each computes every tensor's compressed form first
(:func:`~torchprune_share.calibration.engine.calibrate`, which leaves the model as it
was), and only then registers the same parametrizations as the data-free path
(:class:`~torchprune_share.WeightSharing` with codebook and index,
:class:`~torchprune_share.PruningMask`), so training, checkpoints, files and bake work
unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..parametrizations import PruningMask, WeightSharing, cluster, get_reparametrization
from ..pruning import adopt_torch_pruning, apply_keep_mask, compressible_state, level_mask
from ..sharing import commit_sharing
from .engine import Target, calibrate
from .matrix import ALGORITHMS, Statistics, prune_matrix, share_matrix
from .sweep import lookup

__all__ = [
    "PruneRequest",
    "ShareRequest",
    "check_calibration_settings",
    "prune_calibrated",
    "share_calibrated",
]

logger = logging.getLogger(__name__)


def check_calibration_settings(algorithm: object, damping: object) -> None:
    """Raise ``TypeError``/``ValueError`` for a bad ``algorithm`` or ``damping``.

    Example:
        >>> check_calibration_settings("hessian", 0.01)
    """
    if not isinstance(algorithm, str):
        raise TypeError(
            f"algorithm must be a str, one of {ALGORITHMS}, got {type(algorithm).__name__}"
        )
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if isinstance(damping, bool) or not isinstance(damping, (int, float)):
        raise TypeError(f"damping must be a float in (0, 1], got {type(damping).__name__}")
    if not 0.0 < float(damping) <= 1.0:
        raise ValueError(f"damping must be a float in (0, 1], got {damping}")


@dataclass
class ShareRequest:
    """One tensor to share: where it is and its settings (``settings`` as in ``Quantizer``)."""

    qualified: str
    module: nn.Module
    name: str
    bits: int
    settings: dict[str, Any]


@dataclass
class PruneRequest:
    """One tensor to prune to ``sparsity`` (a fraction of all its entries)."""

    qualified: str
    module: nn.Module
    name: str
    sparsity: float


def _as_matrix(value: Tensor) -> Tensor:
    return value.reshape(value.shape[0], -1) if value.dim() > 1 else value.reshape(1, -1)


def _matrix_stats(stats: Statistics) -> Statistics:
    imp = stats.importance
    return Statistics(stats.hessian, _as_matrix(imp) if imp is not None else None)


def _share_one(
    req: ShareRequest, stats: Statistics | None, algorithm: str, damping: float, refits: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(staged value, codebook, index)`` of one tensor."""
    s = req.settings
    value, keep = compressible_state(req.module, req.name)
    per_channel = s["granularity"] == "per_channel"
    on_rows = value.dim() > 1 and s["channel_axis"] % value.dim() == 0
    if stats is not None and per_channel and not on_rows:
        logger.info(
            "%s: per-channel codebooks along axis %d are fitted data-free",
            req.qualified,
            s["channel_axis"],
        )
        stats = None
    if stats is None:
        codebook, index = cluster(
            value,
            keep,
            bits=req.bits,
            granularity=s["granularity"],
            channel_axis=s["channel_axis"],
            init=s["init"],
            method=s["method"],
            generator=s.get("generator"),
        )
        return _gather(codebook, index, s), codebook, index
    w, k2 = _as_matrix(value), _as_matrix(keep)
    cb, codes = share_matrix(
        w,
        k2,
        _matrix_stats(stats),
        bits=req.bits,
        per_row=per_channel,
        algorithm=algorithm,
        damping=damping,
        init=s["init"],
        method=s["method"],
        refits=refits,
        generator=s.get("generator"),
    )
    cb = cb.to(value.dtype)
    staged = lookup(cb, codes).view(value.shape)
    k = cb.shape[1]
    full = torch.where(codes >= 0, codes, k).view(value.shape)
    dense = bool(keep.all())
    from ..parametrizations import index_dtype

    index = full.to(index_dtype(max(k - 1, 0) if dense else k))
    codebook = cb if per_channel else cb[0]
    return staged, codebook, index


def _gather(codebook: Tensor, index: Tensor, s: dict[str, Any]) -> Tensor:
    """The dense value of ``codebook[index]`` (code ``k`` the zero)."""
    zero = codebook.new_zeros((*codebook.shape[:-1], 1))
    table = torch.cat([codebook, zero], dim=-1)
    idx = index.to(torch.int64)
    if s["granularity"] == "per_tensor":
        return table[idx]
    dim = s["channel_axis"] % idx.dim()
    moved = idx.movedim(dim, 0).reshape(idx.shape[dim], -1)
    vals = table.gather(1, moved)
    return vals.reshape(idx.movedim(dim, 0).shape).movedim(0, dim)


def share_calibrated(
    requests: list[ShareRequest],
    model: nn.Module,
    calibration: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    algorithm: str = "hessian",
    damping: float = 0.01,
    refits: int = 1,
    sequential: bool = True,
    asymmetric: bool = False,
    strict: bool = True,
    progress: bool = True,
) -> None:
    """Share every requested tensor, minimising each layer's output error on calibration data.

    See :meth:`~torchprune_share.Quantizer.quantize` for the arguments; nothing changes in
    the model unless every tensor was computed.
    """
    plans: dict[int, tuple[ShareRequest, Tensor, Tensor]] = {}
    by_target = {}
    targets = []
    for r in requests:
        t = Target(r.qualified, r.module, r.name)
        targets.append(t)
        by_target[id(t)] = r

    def compress(t: Target, stats: Statistics | None) -> Tensor:
        req = by_target[id(t)]
        staged, codebook, index = _share_one(req, stats, algorithm, damping, refits)
        plans[id(t)] = (req, codebook, index)
        return staged

    calibrate(
        model,
        targets,
        calibration,
        compress,
        forward=forward,
        loss_fn=loss_fn,
        algorithm=algorithm,
        sequential=sequential,
        asymmetric=asymmetric,
        strict=strict,
        progress=progress,
    )
    for t in targets:
        req, codebook, index = plans[id(t)]
        s = req.settings
        commit_sharing(
            req.module,
            req.name,
            codebook,
            index,
            bits=req.bits,
            granularity=s["granularity"],
            channel_axis=s["channel_axis"],
            init=s["init"],
            method=s["method"],
            cache_index=s.get("cache_index", True),
        )


def _prune_one(
    req: PruneRequest, stats: Statistics | None, algorithm: str, damping: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(staged value, new keep mask, updated values or None)`` of one tensor."""
    value, keep = compressible_state(req.module, req.name)
    extra = max(round(req.sparsity * value.numel()) - (value.numel() - int(keep.sum())), 0)
    if stats is None or extra == 0:
        new_keep = level_mask(value, keep, extra) if extra else keep
        return torch.where(new_keep, value, value.new_zeros(())), new_keep, None
    new_keep, new_w = prune_matrix(
        _as_matrix(value),
        _as_matrix(keep),
        _matrix_stats(stats),
        extra,
        algorithm=algorithm,
        damping=damping,
    )
    new_keep = new_keep.view(value.shape)
    if new_w is None:
        return torch.where(new_keep, value, value.new_zeros(())), new_keep, None
    new_w = new_w.view(value.shape).to(value.dtype)
    return new_w, new_keep, new_w


def _commit_pruning(
    module: nn.Module, name: str, keep: Tensor, values: Tensor | None, qualified: str
) -> None:
    reparam = get_reparametrization(module, name)
    if values is not None:
        if isinstance(reparam, WeightSharing):
            logger.info("%s is shared: its codes are kept, only the mask is calibrated", qualified)
        else:
            adopt_torch_pruning(module, name)
            with torch.no_grad():
                param = (
                    module.parametrizations[name].original
                    if isinstance(reparam, PruningMask)
                    else getattr(module, name)
                )
                # Entries pruned now keep their old value under the mask: they can come
                # back with update_masks, as after level pruning.
                param.copy_(torch.where(keep, values, param))
    apply_keep_mask(module, name, keep)


def prune_calibrated(
    requests: list[PruneRequest],
    model: nn.Module,
    calibration: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    algorithm: str = "hessian",
    damping: float = 0.01,
    sequential: bool = True,
    asymmetric: bool = False,
    strict: bool = True,
    progress: bool = True,
) -> None:
    """Prune every requested tensor by its effect on the layer's output on calibration data.

    See :meth:`~torchprune_share.LevelPruner.prune` for the arguments; nothing changes in
    the model unless every tensor was computed.
    """
    plans: dict[int, tuple[PruneRequest, Tensor, Tensor | None]] = {}
    by_target, targets = {}, []
    for r in requests:
        t = Target(r.qualified, r.module, r.name)
        targets.append(t)
        by_target[id(t)] = r

    def compress(t: Target, stats: Statistics | None) -> Tensor:
        req = by_target[id(t)]
        staged, keep, values = _prune_one(req, stats, algorithm, damping)
        plans[id(t)] = (req, keep, values)
        return staged

    calibrate(
        model,
        targets,
        calibration,
        compress,
        forward=forward,
        loss_fn=loss_fn,
        algorithm=algorithm,
        sequential=sequential,
        asymmetric=asymmetric,
        strict=strict,
        progress=progress,
    )
    for t in targets:
        req, keep, values = plans[id(t)]
        _commit_pruning(req.module, req.name, keep, values, req.qualified)
