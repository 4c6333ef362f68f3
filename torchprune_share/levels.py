"""What a level of a scan means: the :class:`LevelKind` of sparsities, bit widths, any method.

A level kind maps a tensor's value and keep-mask to its value at one level;
:func:`torchprune_share.analysis.scan` evaluates the model at each.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import prune

from .config import DEFAULT_INIT, SharingConfig
from .parametrizations import WeightSharing, cluster
from .pruning import level_mask
from .sharing import changed_settings, sharing_config

__all__ = ["BitLevels", "LevelKind", "PruningMethodLevels", "SparsityLevels", "is_real"]


def is_real(x: object) -> bool:
    """Whether ``x`` is a real number and not a ``bool``.

    Args:
        x (object): the value.

    Example:
        >>> is_real(0.5), is_real(True), is_real("1")
        (True, False, False)
    """
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
        >>> from torch import nn
        >>> from torchprune_share import scan
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
            if not is_real(level):
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
        init: str = DEFAULT_INIT,
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
