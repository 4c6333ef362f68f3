"""The two reparametrizations behind pruning and weight sharing.

A tensor compressed by this package carries exactly one of them, registered with
:func:`torch.nn.utils.parametrize.register_parametrization`:

* :class:`PruningMask`: ``weight = original * mask``, ``original`` the dense tensor and
  ``mask`` a ``bool`` buffer (the shape of ``torch.ao.pruning``'s ``FakeSparsity``).
* :class:`WeightSharing`: ``weight = table[index]`` where ``original`` *is* the trainable
  codebook (``(k,)`` per tensor or ``(C, k)`` per channel), ``table`` is the codebook with
  one non-trainable zero appended, and ``index`` an integer buffer. Code ``k`` (one past
  the last centroid) is the pruned zero, so a shared tensor carries its own zero pattern
  and no dense float copy of the weight exists anywhere.

Sharing subsumes pruning: pruning a shared tensor moves entries to the zero code, and
sharing a pruned tensor replaces its :class:`PruningMask`. One parametrization per tensor
is what lets a single ``parametrize.remove_parametrizations(module, name)`` bake it, and
keeps ``original`` always used by the output (DDP needs that). Registering them (ties,
deep copies, pickling) is :mod:`torchprune_share.registration`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .codebook import SPREAD as SPREAD  # re-exported: 0.1.0 callers and tests
from .codebook import CodebookGather, cluster, index_dtype, max_code
from .compat import is_tracing, tensor_version
from .config import DEFAULT_INIT, SharingConfig

__all__ = [
    "PruningMask",
    "WeightSharing",
    "cluster",
    "get_reparametrization",
    "index_dtype",
]

logger = logging.getLogger(__name__)


def _describe(x: object) -> str:
    return f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__


class PruningMask(nn.Module):
    r"""Parametrization that multiplies a tensor by a fixed boolean mask.

    Args:
        mask (Tensor): ``bool`` tensor of the parametrized tensor's shape; ``False`` marks a
            pruned entry.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> mask = torch.tensor([[True, False, True], [False, True, True]])
        >>> _ = parametrize.register_parametrization(lin, "weight", PruningMask(mask))
        >>> int((lin.weight == 0).sum())
        2
    """

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        # (module, name) of every owner of a tied tensor (see register_tied); [] if untied.
        self.tied: list[tuple[nn.Module, str]] = []

    def forward(self, x: Tensor) -> Tensor:
        # where(), not x * mask: pruned entries are +0.0 whatever the sign of the stored
        # value, so a reloaded model (whose stored zeros are +0.0) is bitwise the same.
        return torch.where(self.mask, x, x.new_zeros(()))

    def right_inverse(self, value: Tensor) -> Tensor:
        # Assigning ``module.weight = t`` stores t; the mask still applies on read.
        return value

    def __prepare_scriptable__(self) -> nn.Module:
        raise_not_scriptable()


def raise_not_scriptable() -> None:
    """Refuse ``torch.jit.script`` of a compressed model with the route that works.

    ``torch.nn.utils.parametrize`` modules cannot be scripted (torch's limitation), and
    TorchScript is in maintenance mode.

    Raises:
        RuntimeError: always, naming :func:`torchprune_share.bake` and ``torch.export``.

    Example:
        >>> from torchprune_share import level_prune
        >>> torch.jit.script(level_prune(nn.Linear(2, 2), amount=0.5))
        Traceback (most recent call last):
        ...
        RuntimeError: torch.jit.script cannot compile a pruned or shared model ...
    """
    raise RuntimeError(
        "torch.jit.script cannot compile a pruned or shared model (TorchScript does not "
        "support torch.nn.utils.parametrize, and is in maintenance mode): call "
        "torchprune_share.bake(model) first, or use torch.export.export, which keeps the "
        "compressed form"
    )


class WeightSharing(nn.Module):
    r"""Parametrization ``weight = codebook[index]`` with a trainable codebook.

    ``original`` of the parametrized tensor is the codebook, shape ``(k,)`` for
    ``granularity="per_tensor"`` or ``(C, k)`` for ``"per_channel"`` (``C`` the size of
    ``channel_axis``). ``index`` is an integer buffer of the weight's shape holding codes
    ``0..k``; code ``k`` is a zero that no optimizer can move (pruned entries). Its dtype is
    ``uint8`` while the largest code in use is at most 255, else ``int32`` (see
    :func:`index_dtype`): 8-bit sharing of a pruned tensor with all 256 centroids needs 257
    codes and takes ``int32``.

    Build it with :func:`torchprune_share.register_weight_sharing`; the constructor is
    public so that checkpoints can re-create it without clustering.

    Baking with ``parametrize.remove_parametrizations(module, name)`` resizes the codebook
    ``nn.Parameter`` in place into the full tensor (same object). A ``.grad`` left by the
    last backward still has the codebook's shape and would break the next backward: call
    ``optimizer.zero_grad()`` (which sets it to ``None``) before, or use
    :func:`torchprune_share.bake`, which clears it.

    Args:
        index (Tensor): integer codes, the shape of the parametrized tensor.
        codebook (Tensor, optional): the initial codebook, returned once by
            :meth:`right_inverse` when the parametrization is registered.
        bits (int): the sharing width; at most ``2**bits`` centroids per codebook.
        granularity (str): ``"per_tensor"`` or ``"per_channel"``.
        channel_axis (int): the channel dimension for ``"per_channel"``.
        init (str): k-means initialisation used when re-clustering.
        method (str): k-means method used when re-clustering.
        cache_index (bool): keep an ``int32`` copy of the flat gather index between
            forwards (4 bytes per weight of memory for a ~2x faster gather). Default: True.

    Example:
        >>> lin = nn.Linear(4, 2)
        >>> index = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2]], dtype=torch.uint8)
        >>> ws = WeightSharing(index, codebook=torch.tensor([-0.5, 0.5]), bits=1)
        >>> _ = parametrize.register_parametrization(lin, "weight", ws)
        >>> lin.weight
        tensor([[-0.5000,  0.5000,  0.0000, -0.5000],
                [ 0.5000,  0.5000, -0.5000,  0.0000]], grad_fn=<...>)
    """

    def __init__(
        self,
        index: Tensor,
        codebook: Tensor | None = None,
        *,
        bits: int | None = None,
        granularity: str = "per_tensor",
        channel_axis: int = 0,
        init: str = DEFAULT_INIT,
        method: str = "lloyd",
        cache_index: bool = True,
        config: SharingConfig | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            if bits is None:
                raise TypeError("WeightSharing needs bits= or config=")
            config = SharingConfig(
                bits=bits,
                granularity=granularity,
                channel_axis=channel_axis,
                init=init,
                method=method,
            )
        elif not isinstance(config, SharingConfig):
            raise TypeError(f"config must be a SharingConfig, got {type(config).__name__}")
        if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex():
            raise TypeError(f"index must be an integer tensor, got {_describe(index)}")
        if codebook is not None and not (
            isinstance(codebook, Tensor) and codebook.is_floating_point()
        ):
            raise TypeError(f"codebook must be a floating-point tensor, got {_describe(codebook)}")
        self.register_buffer("index", index)
        # What ran: "auto" stands for the data-free init here; a calibrated fit passes
        # its config already resolved.
        self.config = config.resolved()
        # The zero code is the number of centroids; kept here (and in the extra state)
        # because right_inverse does not see the codebook.
        self.num_centroids = int(codebook.shape[-1]) if codebook is not None else 0
        self.cache_index = cache_index
        self._pending_codebook = codebook
        self.tied: list[tuple[nn.Module, str]] = []  # see register_tied
        self._cache: Tensor | None = None
        self._cache_key: tuple | None = None

    # The settings, read from the config (replace the config to change them).
    bits = property(lambda self: self.config.bits, doc="The sharing width.")
    granularity = property(lambda self: self.config.granularity, doc="Codebook granularity.")
    channel_axis = property(lambda self: self.config.channel_axis, doc="The channel axis.")
    init = property(lambda self: self.config.init, doc="k-means initialisation.")
    method = property(lambda self: self.config.method, doc="k-means method.")

    # -- state that must survive state_dict() ------------------------------------------
    def get_extra_state(self) -> Tensor:
        # A tensor, not a dict, so that a state_dict holds only tensors (safetensors).
        return self.config.to_state(self.num_centroids)

    def set_extra_state(self, state: Tensor | dict[str, Any]) -> None:
        # Also the dict of 0.1.0 checkpoints; calibration settings stay as they are.
        config, k = SharingConfig.from_state(state)
        self.config = config.replace(algorithm=self.config.algorithm, damping=self.config.damping)
        self.num_centroids = k

    def check_state_dict(self, state_dict: Mapping[str, Any], prefix: str) -> str | None:
        """The problem of loading these entries into this parametrization, or ``None``.

        torch's ``load_state_dict`` copies each entry in place: it cannot resize the
        codebook or widen the index, and it copies what fits before raising on what does
        not. So everything is checked here first: the sharing state, the index (an
        integer tensor of this index's shape whose codes fit both the new codebook and
        this index's dtype) and the codebook (this codebook's shape).

        Args:
            state_dict (Mapping): the entries, keys as in ``module.state_dict()``.
            prefix (str): this parametrization's key prefix, e.g.
                ``"fc.parametrizations.weight.0."``.

        Returns:
            A message, or ``None`` when the entries can be loaded (absent ones are left
            to the caller's strictness).

        Example:
            >>> ws = WeightSharing(torch.zeros(3, dtype=torch.uint8), torch.zeros(2), bits=1)
            >>> sd = {"0.index": torch.tensor([0, 1, 3], dtype=torch.uint8),
            ...       "0._extra_state": ws.get_extra_state(), "original": torch.zeros(2)}
            >>> ws.check_state_dict(sd, "0.")
            'index codes must lie in [0, 2], got 0..3'
        """
        extra_key = prefix + "_extra_state"
        if extra_key not in state_dict:
            return None
        try:
            config, k = SharingConfig.from_state(state_dict[extra_key])
            config.check_tensor(self.index.dim())
        except (TypeError, ValueError) as err:
            return str(err)
        index = state_dict.get(prefix + "index")
        if index is not None:
            if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex():
                return f"index must be an integer tensor, got {_describe(index)}"
            if index.shape != self.index.shape:
                return (
                    f"index has shape {tuple(index.shape)}, the module's {tuple(self.index.shape)}"
                )
            if index.numel():
                lo, hi = int(index.min()), int(index.max())
                if lo < 0 or hi > k:
                    return f"index codes must lie in [0, {k}], got {lo}..{hi}"
                if hi > max_code(self.index.dtype):
                    return (
                        f"code {hi} does not fit this module's {self.index.dtype} index; load "
                        "with torchprune_share.load_state_dict, which re-creates it"
                    )
        if k != self.num_centroids or config.granularity != self.granularity:
            return (
                f"the checkpoint's codebook has {k} centroids {config.granularity}, this "
                f"module's {self.num_centroids} {self.granularity}; torch's load_state_dict "
                "cannot resize it: load with torchprune_share.load_state_dict"
            )
        chain_prefix = prefix[: prefix.rstrip(".").rfind(".") + 1]  # drop "<i>."
        codebook = state_dict.get(chain_prefix + "original")
        if codebook is not None and not (
            isinstance(codebook, Tensor) and codebook.is_floating_point()
        ):
            return f"codebook must be a floating-point tensor, got {_describe(codebook)}"
        return None

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        problem = self.check_state_dict(state_dict, prefix)
        if problem is not None:  # change nothing
            error_msgs.append(f"{prefix[:-1]}: {problem}")
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._cache = self._cache_key = None

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, granularity={self.granularity!r}, "
            f"index={tuple(self.index.shape)} {self.index.dtype}"
        )

    # -- the parametrization --------------------------------------------------------
    @property
    def channel_dim(self) -> int:
        """The channel axis as a non-negative dimension of ``index``."""
        return self.channel_axis % max(self.index.dim(), 1)

    def kept(self) -> Tensor:
        """``bool`` tensor of the index's shape, ``False`` where the entry is the pruned zero.

        Example:
            >>> ws = WeightSharing(torch.tensor([0, 2, 1], dtype=torch.uint8), bits=1)
            >>> ws.num_centroids = 2
            >>> ws.kept()
            tensor([ True, False,  True])
        """
        if self.num_centroids > max_code(self.index.dtype):
            # The zero code does not fit the dtype (256 centroids in a uint8 index), so no
            # entry can hold it; comparing would wrap 256 to 0 and call code 0 pruned.
            return torch.ones_like(self.index, dtype=torch.bool)
        return self.index != self.num_centroids

    def flat_index(self, k: int) -> Tensor:
        """The ``int32`` index into :data:`SPREAD` copies of the flat ``(rows, k + 1)`` table.

        Cached (when ``cache_index``) until the index buffer changes.

        Args:
            k (int): the number of centroids per codebook (the zero is code ``k``).

        Returns:
            1-D ``int32`` tensor of ``index.numel()`` entries: code ``j`` of channel ``c``
            (``c = 0`` per tensor) at flat position ``i`` becomes
            ``(i % SPREAD) * rows * (k + 1) + c * (k + 1) + j``.

        Example:
            >>> idx = torch.tensor([[0, 1], [2, 0]], dtype=torch.uint8)
            >>> WeightSharing(idx, bits=1, granularity="per_channel").flat_index(2)
            tensor([ 0,  7, 17, 21], dtype=torch.int32)
        """
        idx = self.index
        # Under a tracer or compiler the index may be a fake tensor with no data pointer,
        # and a cached tensor would become a constant of the graph; an inference tensor
        # (a model built under inference mode) has no version counter to key a cache on:
        # compute it afresh.
        cache = self.cache_index and not is_tracing(idx) and not idx.is_inference()
        key = (idx.device, idx.data_ptr(), tensor_version(idx), k) if cache else None
        if cache and self._cache is not None and self._cache_key == key:
            return self._cache
        # A cache built under inference_mode would be an inference tensor, which a later
        # training forward could not save for backward.
        with torch.inference_mode(False):
            flat = idx.to(torch.int32)
            if self.granularity == "per_channel":
                shape = [1] * idx.dim()
                shape[self.channel_dim] = idx.shape[self.channel_dim]
                offsets = torch.arange(
                    idx.shape[self.channel_dim], device=idx.device, dtype=torch.int32
                )
                flat = flat + (offsets * (k + 1)).view(shape)
            flat = flat.reshape(-1)
            rows = idx.shape[self.channel_dim] if self.granularity == "per_channel" else 1
            n = flat.numel()
            copies = torch.arange(SPREAD, device=idx.device, dtype=torch.int32) * (rows * (k + 1))
            flat = flat + copies.repeat(-(-n // SPREAD))[:n]
        if cache:
            self._cache, self._cache_key = flat, key
        return flat

    def forward(self, codebook: Tensor) -> Tensor:
        flat = self.flat_index(codebook.shape[-1])
        if torch.jit.is_tracing():
            # torch.jit.trace cannot record an autograd.Function: the same gather in plain
            # ops (autograd's gradient of it is the same sum per centroid).
            zero = codebook.new_zeros((*codebook.shape[:-1], 1))
            table = torch.cat([codebook, zero], dim=-1).reshape(-1).repeat(SPREAD)
            return table.index_select(0, flat).view(self.index.shape)
        return CodebookGather.apply(codebook, flat, self.index.shape)

    def __prepare_scriptable__(self) -> nn.Module:
        raise_not_scriptable()

    def right_inverse(self, value: Tensor) -> Tensor:
        """Return the codebook for ``value``: clustered anew, keeping the zero pattern.

        On registration this hands over the codebook computed beforehand; afterwards,
        ``module.weight = t`` re-clusters ``t`` with this parametrization's settings.
        """
        if self._pending_codebook is not None:
            codebook, self._pending_codebook = self._pending_codebook, None
            return codebook.to(dtype=value.dtype, device=value.device)
        codebook, index = cluster(value, self.kept(), config=self.config)
        self.set_index(index, codebook.shape[-1])
        return codebook

    def set_index(self, index: Tensor, num_centroids: int) -> None:
        """Replace the index buffer (its dtype may change) and drop the gather cache.

        Args:
            index (Tensor): the new integer codes, ``0..num_centroids``.
            num_centroids (int): the codebook size ``k``; code ``k`` is the zero.

        Example:
            >>> ws = WeightSharing(torch.zeros(3, dtype=torch.uint8), bits=1)
            >>> ws.set_index(torch.tensor([0, 1, 2], dtype=torch.uint8), 2)
            >>> ws.kept()
            tensor([ True,  True, False])
        """
        self.num_centroids = int(num_centroids)
        if index.dtype == self.index.dtype and index.shape == self.index.shape:
            self.index.copy_(index)
        else:
            self.index = index.to(self.index.device)
        self._cache = None
        self._cache_key = None


def get_reparametrization(module: nn.Module, name: str) -> nn.Module | None:
    """Return this package's parametrization on ``module.<name>``, or ``None``.

    Args:
        module (nn.Module): the module.
        name (str): the tensor's name.

    Returns:
        The :class:`PruningMask` or :class:`WeightSharing` instance, or ``None`` when the
        tensor is not reparametrized by this package.

    Example:
        >>> get_reparametrization(nn.Linear(2, 2), "weight") is None
        True
    """
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, (PruningMask, WeightSharing)):
            return p
    return None
