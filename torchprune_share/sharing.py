"""Trained k-means weight sharing (Deep Compression §3) as a parametrization."""

from __future__ import annotations

import torch
from torch import nn

from .config import DEFAULT_INIT, SharingConfig
from .kmeans import INITS as INITS  # re-exported for 0.1.0 callers
from .kmeans import METHODS as METHODS
from .parametrizations import WeightSharing, cluster
from .pruning import compressible_state
from .registration import builds_state, register_tied
from .state import TensorState

__all__ = ["recluster", "register_weight_sharing"]


def sharing_config(
    config: SharingConfig | None,
    given: dict[str, object],
    base: SharingConfig | None = None,
) -> SharingConfig:
    """The :class:`SharingConfig` of a call that takes ``config=`` or loose settings.

    Args:
        config (SharingConfig, optional): the settings as one object.
        given (dict): the loose settings the caller set (``{"bits": 2, ...}``).
        base (SharingConfig, optional): where the settings not given come from; default
            the defaults.

    Returns:
        ``config`` itself, or ``base`` with the given settings replaced (validated).

    Raises:
        TypeError: ``config`` is no :class:`SharingConfig`, or comes with loose settings;
            a setting of the wrong type.
        ValueError: a setting with a wrong value.

    Example:
        >>> sharing_config(None, {"bits": 2}).bits
        2
    """
    if config is None:
        return SharingConfig.from_mapping(given, base=base)
    if not isinstance(config, SharingConfig):
        raise TypeError(f"config must be a SharingConfig, got {type(config).__name__}")
    if given:
        raise TypeError(f"pass either config= or {sorted(given)}, not both")
    return config


_DEFAULTS = SharingConfig()


def check_runtime(cache_index: object, generator: object) -> None:
    """Raise ``TypeError`` unless ``cache_index`` is a bool and ``generator`` a generator or None.

    Args:
        cache_index (object): the ``cache_index`` argument.
        generator (object): the ``generator`` argument.

    Example:
        >>> check_runtime(True, None)
        >>> check_runtime("yes", None)
        Traceback (most recent call last):
        ...
        TypeError: cache_index must be a bool, got str
    """
    if not isinstance(cache_index, bool):
        raise TypeError(f"cache_index must be a bool, got {type(cache_index).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def changed_settings(settings: dict[str, object]) -> dict[str, object]:
    """The settings that differ from :class:`SharingConfig`'s defaults.

    A caller passing ``config=`` must leave the loose settings at their defaults; these
    are the ones it did not.

    Args:
        settings (dict): loose settings, ``{"bits": 4, "init": "density", ...}``.

    Returns:
        The entries whose value (or type) differs from the default.

    Example:
        >>> changed_settings({"bits": 4, "init": "density"})
        {'init': 'density'}
    """
    out = {}
    for key, value in settings.items():
        default = getattr(_DEFAULTS, key)
        if not (type(value) is type(default) and value == default):
            out[key] = value
    return out


@builds_state
def register_weight_sharing(
    module: nn.Module,
    name: str = "weight",
    bits: int = 4,
    *,
    init: str = DEFAULT_INIT,
    method: str = "lloyd",
    granularity: str = "per_tensor",
    channel_axis: int = 0,
    cache_index: bool = True,
    generator: torch.Generator | None = None,
    config: SharingConfig | None = None,
    importance: torch.Tensor | None = None,
) -> nn.Module:
    r"""Share the values of ``module.<name>`` through a trainable k-means codebook.

    The tensor becomes ``codebook[index]``: ``codebook`` (the parametrization's
    ``original``, an ``nn.Parameter``) holds at most ``2**bits`` centroids per codebook and
    trains with the Deep Compression rule (each centroid's gradient is the sum of the
    gradients of its weights); ``index`` is an integer buffer. Pruned entries (by
    :func:`~torchprune_share.level_prune` or ``torch.nn.utils.prune``, whose mask is
    adopted) take a zero code that no optimizer moves, and are left out of the
    clustering. A tensor with fewer distinct values than ``2**bits`` gets a smaller
    codebook, with no empty cluster (per channel, a channel with fewer distinct values
    than the largest codebook pads its row with copies that own no weight).

    The tensor's ``nn.Parameter`` object becomes the codebook (``set_``, as
    ``parametrize`` does), so its ``.grad`` is cleared, and an optimizer built before holds
    state of the old shape: build a new one.

    Args:
        module (nn.Module): module containing the tensor.
        name (str): parameter name within ``module``. Default: ``"weight"``.
        bits (int): sharing width in [1, 16]. Default: 4.
        init (str): k-means initialisation, one of ``"linear"`` (as in Deep Compression),
            ``"density"``, ``"random"``, ``"kmeans++"``, ``"dp"``, or ``"auto"`` (the
            default: ``"linear"`` here, see :meth:`~torchprune_share.SharingConfig.resolved`).
        method (str): ``"lloyd"`` (default), ``"optimal"`` or ``"sklearn"``
            (see :func:`torchprune_share.kmeans.kmeans1d`).
        granularity (str): ``"per_tensor"`` (one codebook) or ``"per_channel"`` (one per
            slice along ``channel_axis``).
        channel_axis (int): channel dimension for ``"per_channel"``. Default: 0.
        cache_index (bool): keep an ``int32`` gather index between forwards (faster
            training, 4 more bytes per weight in memory; never saved). Default: True.
        generator (torch.Generator, optional): randomness for the random inits.
        config (SharingConfig, optional): ``bits``, ``init``, ``method``, ``granularity``
            and ``channel_axis`` as one object, in place of those arguments (leave them at
            their defaults).
        importance (Tensor, optional): per-entry weights ``>= 0`` of the tensor's shape
            for a weighted k-means (e.g. Fisher information or an activation-based score
            you computed); default unweighted. For scores from calibration data, see
            :meth:`~torchprune_share.Quantizer.quantize`.

    Returns:
        ``module``, with ``module.<name>`` parametrized.

    Raises:
        TypeError: a setting of the wrong type, or ``config`` given with loose settings.
        ValueError: a setting out of range (the message names it), ``name`` already shared.

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> _ = register_weight_sharing(lin, "weight", bits=2)
        >>> len(torch.unique(lin.weight.detach())) <= 4
        True
        >>> lin.parametrizations.weight.original.shape
        torch.Size([4])
    """
    loose = {
        "bits": bits,
        "init": init,
        "method": method,
        "granularity": granularity,
        "channel_axis": channel_axis,
    }
    cfg = sharing_config(config, loose if config is None else changed_settings(loose))
    check_runtime(cache_index, generator)
    reparam = TensorState.of(module, name).reparam
    if isinstance(reparam, WeightSharing):
        raise ValueError(
            f"name={name!r} is already shared ({reparam.bits} bits); call "
            "torchprune_share.recluster(module, name, bits=...) to cluster it again"
        )
    return _share(
        module, name, cfg, cache_index=cache_index, generator=generator, importance=importance
    )


@builds_state
def recluster(
    module: nn.Module,
    name: str = "weight",
    bits: int | None = None,
    *,
    init: str | None = None,
    method: str | None = None,
    granularity: str | None = None,
    channel_axis: int | None = None,
    cache_index: bool | None = None,
    generator: torch.Generator | None = None,
    config: SharingConfig | None = None,
) -> nn.Module:
    r"""Cluster a shared tensor again from its current values (Deep Compression's re-quantize).

    The zero pattern is kept; the codebook is replaced (build a new optimizer after).

    Args:
        module (nn.Module): module containing the shared tensor.
        name (str): parameter name. Default: ``"weight"``.
        bits (int, optional): new width; default keeps the current one.
        init, method, granularity, channel_axis, cache_index: as in
            :func:`register_weight_sharing`; ``None`` (the default) keeps the current one.
        generator (torch.Generator, optional): randomness for the random inits.
        config (SharingConfig, optional): all the settings as one object, in place of
            ``bits`` .. ``channel_axis``.

    Returns:
        ``module``.

    Raises:
        TypeError: a setting of the wrong type, or ``config`` given with loose settings.
        ValueError: ``name`` is not shared, or a setting is out of range.

    Example:
        >>> lin = register_weight_sharing(nn.Linear(64, 32), bits=4)
        >>> _ = recluster(lin, "weight", bits=2)
        >>> lin.parametrizations.weight.original.numel()
        4
    """
    reparam = TensorState.of(module, name).reparam
    if not isinstance(reparam, WeightSharing):
        raise ValueError(f"name={name!r} is not shared; call register_weight_sharing first")
    loose = {
        "bits": bits,
        "init": init,
        "method": method,
        "granularity": granularity,
        "channel_axis": channel_axis,
    }
    given = {k: v for k, v in loose.items() if v is not None}
    cfg = sharing_config(config, given, reparam.config)
    keep_cache = reparam.cache_index if cache_index is None else cache_index
    check_runtime(keep_cache, generator)
    return _share(module, name, cfg, cache_index=keep_cache, generator=generator)


def _share(
    module: nn.Module,
    name: str,
    config: SharingConfig,
    *,
    cache_index: bool,
    generator: torch.Generator | None = None,
    importance: torch.Tensor | None = None,
) -> nn.Module:
    """Cluster ``module.<name>`` and make a :class:`WeightSharing` its one reparametrization.

    Whatever carries the tensor now (nothing, torch's pruning hook, a :class:`PruningMask`
    or a :class:`WeightSharing`) is replaced, keeping its zero pattern; the arguments are
    already validated.
    """
    value, keep = compressible_state(module, name)
    config.check_tensor(value.dim())
    imp = None if importance is None else check_importance(importance, value)
    codebook, index = cluster(value, keep, config=config, generator=generator, importance=imp)
    return share_with(module, name, codebook, index, config, cache_index=cache_index)


def check_importance(importance: object, value: torch.Tensor) -> torch.Tensor:
    """``importance`` as the weights of a weighted k-means of ``value``, after checking it.

    Args:
        importance (object): the per-entry weights given by the caller.
        value (Tensor): the tensor to cluster.

    Returns:
        ``importance`` detached, on ``value``'s device.

    Raises:
        TypeError: ``importance`` is not a floating-point tensor.
        ValueError: wrong shape, negative, NaN/Inf, or all zero.

    Example:
        >>> check_importance(torch.ones(2), torch.zeros(2))
        tensor([1., 1.])
    """
    if not isinstance(importance, torch.Tensor) or not importance.is_floating_point():
        raise TypeError(
            "importance must be a floating-point tensor of the weight's shape, got "
            f"{type(importance).__name__ if not isinstance(importance, torch.Tensor) else importance.dtype}"
        )
    if importance.shape != value.shape:
        raise ValueError(
            f"importance must have the weight's shape {tuple(value.shape)}, got "
            f"{tuple(importance.shape)}"
        )
    if not bool(torch.isfinite(importance).all()) or bool((importance < 0).any()):
        raise ValueError("importance must be finite and >= 0 everywhere")
    if not bool((importance > 0).any()):
        raise ValueError("importance is zero everywhere: no entry would count")
    return importance.detach().to(value.device)


def share_with(
    module: nn.Module,
    name: str,
    codebook: torch.Tensor,
    index: torch.Tensor,
    config: SharingConfig,
    *,
    cache_index: bool = True,
) -> nn.Module:
    """Make ``codebook[index]`` the one reparametrization of ``module.<name>``.

    Whatever carries the tensor now is replaced, on every owner of a tied tensor (one
    parametrization for all). ``codebook`` and ``index`` are trusted:
    computed by this package (:func:`~torchprune_share.codebook.cluster` or the
    calibrated sweeps), ``index`` holding codes ``0..k`` with ``k`` the pruned zero.

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.
        codebook (Tensor): ``(k,)`` or ``(C, k)`` centroids.
        index (Tensor): integer codes of the tensor's shape.
        config (SharingConfig): the sharing settings.
        cache_index (bool): see :func:`register_weight_sharing`.

    Returns:
        ``module``.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> idx = torch.tensor([[0, 1]], dtype=torch.uint8)
        >>> _ = share_with(lin, "weight", torch.tensor([-1.0, 1.0]), idx, SharingConfig(bits=1))
        >>> lin.weight
        tensor([[-1.,  1.]], grad_fn=<...>)
    """
    state = TensorState.of(module, name)
    owners = state.tie_group()
    device, dtype = state.parameter().device, state.dtype
    # Everything that can fail has run; from here the module changes.
    state.to_plain()
    requires_grad = getattr(module, name).requires_grad
    sharing = WeightSharing(
        index.to(device),
        codebook.to(device=device, dtype=dtype),
        config=config,
        cache_index=cache_index,
    )
    register_tied(owners, sharing, unsafe=True)
    codebook_param = module.parametrizations[name].original
    codebook_param.requires_grad_(requires_grad)
    # The Parameter object is kept (set_ to the codebook); a gradient of the old shape
    # would break the next backward.
    codebook_param.grad = None
    return module
