"""Trained k-means weight sharing (Deep Compression §3) as a parametrization."""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torch.nn.utils import parametrize

from .kmeans import INITS, METHODS
from .parametrizations import (
    GRANULARITIES,
    WeightSharing,
    _register,
    cluster,
    get_reparametrization,
)
from .pruning import adopt_torch_pruning, compressible_state

__all__ = ["recluster", "register_weight_sharing"]


def _validate_sharing_args(
    bits: object, init: str, method: str, granularity: str, channel_axis: object
) -> None:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an int in [1, 16], got {type(bits).__name__}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise TypeError(f"channel_axis must be an int, got {type(channel_axis).__name__}")


def _check_channel_axis(granularity: str, channel_axis: int, dim: int) -> None:
    if granularity != "per_channel":
        return
    if dim == 0:
        raise ValueError(
            'granularity="per_channel" needs a tensor with at least one dimension; use '
            '"per_tensor" for a 0-D tensor'
        )
    if not -dim <= channel_axis < dim:
        raise ValueError(
            f"channel_axis must be in [{-dim}, {dim - 1}] for a {dim}-D tensor, got {channel_axis}"
        )


def register_weight_sharing(
    module: nn.Module,
    name: str = "weight",
    bits: int = 4,
    *,
    init: str = "linear",
    method: str = "lloyd",
    granularity: str = "per_tensor",
    channel_axis: int = 0,
    cache_index: bool = True,
    generator: torch.Generator | None = None,
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
        init (str): k-means initialisation, one of ``"linear"`` (default, as in Deep
            Compression), ``"density"``, ``"random"``, ``"kmeans++"``.
        method (str): ``"lloyd"`` (default), ``"optimal"`` or ``"sklearn"``
            (see :func:`torchprune_share.kmeans.kmeans1d`).
        granularity (str): ``"per_tensor"`` (one codebook) or ``"per_channel"`` (one per
            slice along ``channel_axis``).
        channel_axis (int): channel dimension for ``"per_channel"``. Default: 0.
        cache_index (bool): keep an ``int32`` gather index between forwards (faster
            training, 4 more bytes per weight in memory; never saved). Default: True.
        generator (torch.Generator, optional): randomness for the random inits.

    Returns:
        ``module``, with ``module.<name>`` parametrized.

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> _ = register_weight_sharing(lin, "weight", bits=2)
        >>> len(torch.unique(lin.weight.detach())) <= 4
        True
        >>> lin.parametrizations.weight.original.shape
        torch.Size([4])
    """
    _validate_sharing_args(bits, init, method, granularity, channel_axis)
    reparam = get_reparametrization(module, name)
    if isinstance(reparam, WeightSharing):
        raise ValueError(
            f"name={name!r} is already shared ({reparam.bits} bits); call "
            "torchprune_share.recluster(module, name, bits=...) to cluster it again"
        )
    return _share(
        module,
        name,
        int(bits),
        init=init,
        method=method,
        granularity=granularity,
        channel_axis=int(channel_axis),
        cache_index=cache_index,
        generator=generator,
    )


def recluster(
    module: nn.Module,
    name: str = "weight",
    bits: int | None = None,
    **kwargs: object,
) -> nn.Module:
    r"""Cluster a shared tensor again from its current values (the seed's "re-quantize").

    The zero pattern is kept; the codebook is replaced (build a new optimizer after).

    Args:
        module (nn.Module): module containing the shared tensor.
        name (str): parameter name. Default: ``"weight"``.
        bits (int, optional): new width; default keeps the current one.
        **kwargs: ``init``, ``method``, ``granularity``, ``channel_axis``, ``cache_index``,
            ``generator`` as in :func:`register_weight_sharing`; defaults keep the
            current settings.

    Returns:
        ``module``.

    Example:
        >>> lin = register_weight_sharing(nn.Linear(64, 32), bits=4)
        >>> _ = recluster(lin, "weight", bits=2)
        >>> lin.parametrizations.weight.original.numel()
        4
    """
    reparam = get_reparametrization(module, name)
    if not isinstance(reparam, WeightSharing):
        raise ValueError(f"name={name!r} is not shared; call register_weight_sharing first")
    settings = {
        "init": reparam.init,
        "method": reparam.method,
        "granularity": reparam.granularity,
        "channel_axis": reparam.channel_axis,
        "cache_index": reparam.cache_index,
    }
    unknown = set(kwargs) - set(settings) - {"generator"}
    if unknown:
        raise TypeError(f"recluster got unexpected keyword arguments {sorted(unknown)}")
    settings.update(kwargs)  # type: ignore[arg-type]
    bits = reparam.bits if bits is None else bits
    _validate_sharing_args(
        bits,
        settings["init"],
        settings["method"],
        settings["granularity"],
        settings["channel_axis"],
    )
    return _share(module, name, int(bits), **settings)  # type: ignore[arg-type]


def _share(
    module: nn.Module,
    name: str,
    bits: int,
    *,
    init: str,
    method: str,
    granularity: str,
    channel_axis: int,
    cache_index: bool,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Cluster ``module.<name>`` and make a :class:`WeightSharing` its one reparametrization.

    Whatever carries the tensor now (nothing, torch's pruning hook, a :class:`PruningMask`
    or a :class:`WeightSharing`) is replaced, keeping its zero pattern; the arguments are
    already validated.
    """
    value, keep = compressible_state(module, name)
    _check_channel_axis(granularity, channel_axis, value.dim())
    codebook, index = cluster(
        value,
        keep,
        bits=bits,
        granularity=granularity,
        channel_axis=channel_axis,
        init=init,
        method=method,
        generator=generator,
    )
    # Everything that can fail has run; from here the module changes.
    if get_reparametrization(module, name) is not None:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    else:
        adopt_torch_pruning(module, name)
    requires_grad = getattr(module, name).requires_grad
    sharing = WeightSharing(
        index.to(value.device),
        codebook.to(value.device),
        bits=bits,
        granularity=granularity,
        channel_axis=channel_axis,
        init=init,
        method=method,
        cache_index=cache_index,
    )
    _register(module, name, sharing, unsafe=True)
    codebook_param = module.parametrizations[name].original
    codebook_param.requires_grad_(requires_grad)
    # The Parameter object is kept (set_ to the codebook); a gradient of the old shape
    # would break the next backward.
    codebook_param.grad = None
    return module


def commit_sharing(
    module: nn.Module,
    name: str,
    codebook: torch.Tensor,
    index: torch.Tensor,
    *,
    bits: int,
    granularity: str,
    channel_axis: int,
    init: str,
    method: str,
    cache_index: bool = True,
) -> nn.Module:
    """Make ``codebook[index]`` the one reparametrization of ``module.<name>``.

    Whatever carries the tensor now is replaced; the codebook and index are trusted
    (computed by this package: ``index`` holds codes ``0..k``, ``k`` the pruned zero).
    """
    value = getattr(module, name)
    if get_reparametrization(module, name) is not None:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    else:
        adopt_torch_pruning(module, name)
    requires_grad = getattr(module, name).requires_grad
    sharing = WeightSharing(
        index.to(value.device),
        codebook.to(device=value.device, dtype=value.dtype),
        bits=bits,
        granularity=granularity,
        channel_axis=channel_axis,
        init=init,
        method=method,
        cache_index=cache_index,
    )
    _register(module, name, sharing, unsafe=True)
    codebook_param = module.parametrizations[name].original
    codebook_param.requires_grad_(requires_grad)
    codebook_param.grad = None
    return module
