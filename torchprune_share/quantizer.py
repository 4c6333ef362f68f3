"""The :class:`Quantizer` policy: k-means weight sharing of named tensors at per-tensor widths."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .config import SharingConfig
from .names import DEFAULT
from .options import (
    Problems,
    check_option_names,
    option_entries,
    raise_problems,
    with_defaults,
)
from .pruning import compressible_state
from .sharing import (
    changed_settings,
    check_runtime,
    recluster,
    register_weight_sharing,
    sharing_config,
)
from .state import SHARED, TensorState

__all__ = ["Quantizer"]

logger = logging.getLogger(__name__)

_RUNTIME_KEYS = ("cache_index", "generator")


def _option_config(
    base: SharingConfig, bits: object, settings: object
) -> tuple[SharingConfig, dict[str, Any]]:
    """The config and runtime settings of one Quantizer option (raises TypeError/ValueError)."""
    if isinstance(bits, SharingConfig):
        if settings:
            raise TypeError("an option with a SharingConfig takes no settings dict")
        return bits, {}
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
    runtime = {k: settings[k] for k in _RUNTIME_KEYS if k in settings}
    _check_runtime(runtime)
    fields = {k: v for k, v in settings.items() if k not in _RUNTIME_KEYS}
    return SharingConfig.from_mapping({**fields, "bits": bits}, base=base), runtime


def _check_runtime(runtime: Mapping[str, Any]) -> None:
    check_runtime(runtime.get("cache_index", True), runtime.get("generator"))


class Quantizer:
    r"""k-means weight sharing of named tensors at per-tensor bit widths.

    :meth:`quantize` registers :func:`~torchprune_share.register_weight_sharing` on each
    tensor, or re-clusters an already shared one (:func:`~torchprune_share.recluster`, the
    "re-train and re-quantize" step of the dnn-compression-style API). Build a new optimizer afterwards: the codebooks are
    new parameters.

    Args:
        options: ``[(name, bits), ...]``, ``[(name, bits, {setting: value}), ...]`` or
            ``{name: bits}``; ``bits`` an int in [1, 16]; ``"*"`` sets a default for every
            weight of dim >= 2 not named otherwise. Checked here and against the model
            before anything changes; one error lists every bad entry
            (``TypeError`` when each is a wrong type, else ``ValueError``).
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
        config: SharingConfig | None = None,
    ) -> None:
        loose = {"init": init, "method": method, "granularity": granularity}
        loose["channel_axis"] = channel_axis
        base = sharing_config(config, loose if config is None else changed_settings(loose))
        runtime_defaults = {"cache_index": cache_index, "generator": generator}
        _check_runtime(runtime_defaults)
        entries = option_entries(options, "Quantizer")
        bad = Problems()
        check_option_names(entries, bad)
        self.options: dict[str, tuple[int, dict[str, Any]]] = {}
        self.configs: dict[str, SharingConfig] = {}
        for entry in entries:
            if len(entry) not in (2, 3):
                bad.append(f"{entry!r}: expected (name, bits) or (name, bits, settings)")
                continue
            name, bits = entry[0], entry[1]
            if not isinstance(name, str):
                continue  # reported by check_option_names
            try:
                cfg, runtime = _option_config(base, bits, entry[2] if len(entry) == 3 else {})
            except (TypeError, ValueError) as err:
                bad.error(f"{name!r}: ", err)
                continue
            self.configs[name] = cfg
            settings = {
                "init": cfg.init,
                "method": cfg.method,
                "granularity": cfg.granularity,
                "channel_axis": cfg.channel_axis,
                **runtime_defaults,
                **runtime,
            }
            self.options[name] = (cfg.bits, settings)
        raise_problems("Quantizer", bad)
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
        return [(q, m, n, *v) for q, m, n, v in with_defaults(model, self.options, "Quantizer")]

    def quantize(self, model: nn.Module) -> nn.Module:
        r"""Share (or re-cluster) every target tensor of ``model``.

        Every tensor is checked first (name, dtype, finite values, channel axis); on a
        problem a ``ValueError`` lists them all and nothing changes.

        Args:
            model (nn.Module): the model, changed in place.

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
        bad, plan = Problems(), self.targets(model)
        for q, module, name, _, _ in plan:
            try:
                value, _ = compressible_state(module, name)
                self._config_of(q).check_tensor(value.dim())
            except (TypeError, ValueError) as err:
                bad.error(f"{q!r}: ", err)
        raise_problems("Quantizer", bad)
        for q, module, name, bits, settings in plan:
            config = self._config_of(q)
            runtime = {k: settings[k] for k in _RUNTIME_KEYS}
            if TensorState.of(module, name).kind == SHARED:
                recluster(module, name, config=config, **runtime)
            else:
                register_weight_sharing(module, name, config=config, **runtime)
            logger.debug("%s shared at %d bits", q, bits)
        return model

    def _config_of(self, qualified: str) -> SharingConfig:
        """The config of a target: its own option's, else the ``"*"`` default's."""
        return self.configs.get(qualified, self.configs.get(DEFAULT))  # type: ignore[return-value]

    def __repr__(self) -> str:
        widths = {q: b for q, (b, _) in self.options.items()}
        return f"Quantizer({widths!r})"
