"""The :class:`Quantizer` policy: k-means weight sharing of named tensors at per-tensor widths."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .calibration.apply import ShareRequest, share_calibrated
from .config import (
    DEFAULT_ALGORITHM,
    DEFAULT_ASYMMETRIC,
    DEFAULT_AUGMENT,
    DEFAULT_DAMPING,
    DEFAULT_INIT,
    DEFAULT_SEQUENTIAL,
    SharingConfig,
)
from .names import DEFAULT
from .options import (
    Problems,
    check_option_names,
    option_entries,
    raise_problems,
    with_defaults,
)
from .pruning import compressible_state
from .registration import builds_state
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
        algorithm (str): with calibration data, how the codebooks are fitted:
            ``"hessian"`` (default), ``"diagonal"`` or ``"fisher"`` (see :meth:`quantize`).
        damping (float): relative dampening of the calibration Hessian, in (0, 1].
            Default: 0.1.
        model (nn.Module, optional): the model, to check names now.
        config (SharingConfig, optional): the default settings as one object.

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
        init: str = DEFAULT_INIT,
        method: str = "lloyd",
        granularity: str = "per_tensor",
        channel_axis: int = 0,
        cache_index: bool = True,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
        config: SharingConfig | None = None,
        algorithm: str = DEFAULT_ALGORITHM,
        damping: float = DEFAULT_DAMPING,
    ) -> None:
        loose = {"init": init, "method": method, "granularity": granularity}
        loose.update(channel_axis=channel_axis, algorithm=algorithm, damping=damping)
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

    @builds_state
    def quantize(
        self,
        model: nn.Module,
        calibration: Iterable[Any] | None = None,
        *,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        sequential: bool = DEFAULT_SEQUENTIAL,
        asymmetric: bool = DEFAULT_ASYMMETRIC,
        augment: int | None = DEFAULT_AUGMENT,
        augment_seed: int = 0,
        strict: bool = True,
        progress: bool = True,
        refits: int = 1,
    ) -> nn.Module:
        r"""Share (or re-cluster) every target tensor of ``model``.

        Every tensor is checked first (name, dtype, finite values, channel axis); on a
        problem a ``ValueError`` lists them all and nothing changes.

        Without ``calibration`` the codebooks minimise the weights' squared error
        (k-means, data-free). With it they minimise each layer's *output* error on the
        calibration inputs, by the quantizer's ``algorithm``: ``"hessian"`` fits per-layer
        codebooks by k-means weighted with ``diag H`` (``H = Σ x xᵀ`` of the layer's
        inputs), assigns codes in a GPTQ-class column sweep (each column's error fed
        through ``H⁻¹`` into the columns not yet done), refits the centroids by least
        squares under ``H``, and lets a layer's free bias absorb the mean output error
        (bias correction); ``"diagonal"`` is k-means weighted by ``diag H`` alone;
        ``"fisher"`` is k-means weighted by ``Σ g²`` of ``loss_fn`` (SqueezeLLM). This
        applies to ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` (inputs unfolded; grouped
        convolutions excepted) and ``nn.Embedding`` weights (whose ``H`` is the token
        counts); any other tensor is shared data-free, with one log line. Pruned entries
        stay zero and only kept weights compensate, so calibrated pruning followed by
        calibrated sharing composes. The result is the same parametrization as the
        data-free path; nothing changes in the model if anything fails (``forward``
        raising included).

        Args:
            model (nn.Module): the model, changed in place.
            calibration (Iterable, optional): batches of model inputs (a DataLoader, a
                list); a one-shot iterator is read into a list. ``ValueError`` if empty.
            forward (Callable, optional): ``forward(model, batch)`` runs the model on one
                batch; default ``model(**batch)`` for a mapping, ``model(*batch)`` for a
                tuple or list, else ``model(batch)``. Sequential calibration calls it
                once per batch, each in a worker thread (one runs at a time), with
                gradients off; a mode such as ``torch.autocast`` must be set inside it.
            loss_fn (Callable, optional): ``loss_fn(model, batch)`` -> scalar loss, for
                ``algorithm="fisher"`` (``TypeError`` for a non-scalar).
            sequential (bool): record each layer group's inputs with the earlier groups
                already shared (GPTQ-style); else one pass records all (faster, holds
                every layer's ``H`` at once). Default: True.
            asymmetric (bool): with ``sequential``, fit each layer to the dense model's
                outputs on the dense inputs rather than to its own on the compressed
                inputs, so it also corrects the earlier layers' errors (GPTAQ-style,
                regularised towards the layer's weight). Every batch also runs through a
                dense copy of the model, paused beside it: twice the model's memory,
                one more forward per batch. Off beyond 128 batches, with a log line.
                Default: True.
            augment (int, optional): for token models (a mapping with integer
                ``input_ids``, or an integer ``(B, T)`` tensor), calibrate also on this
                many synthetic sequences per real one: same lengths and first/last
                tokens, the others drawn from the calibration tokens. A few dozen
                sentences leave the fit close to exact on them and poor on others; the
                synthetic ones cut the 3-bit output error of the BERTs measured by about
                a fifth with 2 per real one and more with more, at ``1 + augment`` times
                the calibration forwards. Each batch's real and synthetic rows are sorted
                by length and re-cut into batches of its size (less padding). 0
                calibrates on the real batches only, as given (cheaper when real
                sequences are plenty). Default ``None``:
                :data:`~torchprune_share.config.AUGMENT_SHARING` (5), or none when every
                target is pruned already, where they measured no gain
                (:func:`~torchprune_share.config.default_augment`).
            augment_seed (int): seed of the synthetic tokens. Default: 0.
            strict (bool): ``ValueError`` for a target no batch reaches; with False it is
                shared data-free, with a log line. Default: True.
            progress (bool): a progress bar over the layer groups. Default: True.
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
        bad, plan = Problems(), self.targets(model)
        for q, module, name, _, _ in plan:
            try:
                value, _ = compressible_state(module, name)
                self._config_of(q).check_tensor(value.dim())
            except (TypeError, ValueError) as err:
                bad.error(f"{q!r}: ", err)
        raise_problems("Quantizer", bad)
        if calibration is not None:
            requests = [
                ShareRequest(q, m, n, self._config_of(q), s["cache_index"], s["generator"])
                for q, m, n, _, s in plan
            ]
            share_calibrated(
                requests,
                model,
                calibration,
                refits=refits,
                forward=forward,
                loss_fn=loss_fn,
                sequential=sequential,
                asymmetric=asymmetric,
                augment=augment,
                augment_seed=augment_seed,
                strict=strict,
                progress=progress,
            )
            return model
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
