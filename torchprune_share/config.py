"""The settings of k-means weight sharing, validated in one place, and their byte codes.

:class:`SharingConfig` is the only place where the rules for the sharing settings live:
:func:`~torchprune_share.register_weight_sharing`, :func:`~torchprune_share.recluster`,
:class:`~torchprune_share.Quantizer`, :class:`~torchprune_share.BitLevels`,
:class:`~torchprune_share.WeightSharing`, the checkpoint loader and the file reader build
or read one. :data:`CODES` gives each categorical setting its byte code, the number it is
stored as in a ``.tpsc`` file and in a checkpoint's sharing state.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .kmeans import INITS, METHODS

__all__ = [
    "ALGORITHMS",
    "AUGMENT_PRUNING",
    "AUGMENT_SHARING",
    "AUGMENT_SHARING_PRUNED",
    "CALIBRATED_INIT",
    "CODES",
    "DATA_FREE_INIT",
    "DEFAULT_ALGORITHM",
    "DEFAULT_ASYMMETRIC",
    "DEFAULT_AUGMENT",
    "DEFAULT_DAMPING",
    "DEFAULT_INIT",
    "DEFAULT_SEQUENTIAL",
    "GRANULARITIES",
    "INITS",
    "MAX_BITS",
    "METHODS",
    "STATE_FIELDS",
    "STATE_VERSION",
    "SharingConfig",
    "calibration_settings",
    "code_of",
    "default_augment",
    "value_of",
]

GRANULARITIES = ("per_tensor", "per_channel")
# init="auto" (the default) stands for Deep Compression's linear init without calibration
# data (0.1.0's results, exactly) and for the coarse DP seed with it. Calibrated, at the
# same cost, "dp" against "linear" (benchmarks/results/post_training_init.txt): MiniLM-L3
# cosine 0.9956 / 0.9816 against 0.9955 / 0.9809 at 4 / 3 bits, its 6-layer stand-in
# 0.9930 / 0.9717 against 0.9929 / 0.9711, the GPT's mean gap closed over 20 seeds
# 75.3 / 77.7 % against 69.3 / 76.8 %.
AUTO = "auto"
DEFAULT_INIT = AUTO
DATA_FREE_INIT = "linear"
CALIBRATED_INIT = "dp"
# How calibration data (when given) weighs the clustering: the full layer Hessian, its
# diagonal, or the empirical Fisher.
ALGORITHMS = ("hessian", "diagonal", "fisher")
# The defaults of the calibration settings, for every class and function that takes them.
# Damping 0.1 (not GPTQ's 0.01) generalised better from a few thousand calibration tokens.
DEFAULT_ALGORITHM = "hessian"
DEFAULT_DAMPING = 0.1
# The defaults of the calibration pass (calibration.engine.calibrate, LevelPruner.prune,
# Quantizer.quantize). Measured on BERTs and a small GPT (benchmarks/results/): sequential
# recording and fitting the dense model's outputs each close more of the gap than their
# alternatives.
DEFAULT_SEQUENTIAL = True
DEFAULT_ASYMMETRIC = True
# augment=None, the default, takes the synthetic token rows per real one from what the
# call compresses (default_augment). More rows fit better and cost time in proportion:
# on the 6-layer BERT stand-in (one thread) 3-bit sharing gave 0.9714 / 0.9736 / 0.9757
# cosine with 2 / 3 / 5 rows, 50 % pruning 0.9507 / 0.9537 with 2 / 3. Sharing tensors
# that are all pruned already gains next to nothing from them (with 0 rows instead of 2:
# -0.0004 cosine on the stand-in, +0.0001 on MiniLM-L3, +0.004 perplexity on the GPT over
# 3 seeds), so that call stays on the real batches, and 50 % + 4-bit costs about what it
# did with 2 rows in both calls.
DEFAULT_AUGMENT = None
AUGMENT_SHARING = 5
AUGMENT_PRUNING = 3
AUGMENT_SHARING_PRUNED = 0
MAX_BITS = 16
# The checkpoint sharing state (SharingConfig.to_state): one int64 per field, in order.
STATE_VERSION = 1
STATE_FIELDS = (
    "version",
    "bits",
    "granularity",
    "channel_axis",
    "init",
    "method",
    "num_centroids",
)

# Byte codes of the categorical settings, as a .tpsc file (format version 1) and the
# checkpoint sharing state store them. A code, once given, never changes or moves: add a
# value with the next free code. tests/test_config.py fails when a value has none.
CODES: dict[str, dict[str, int]] = {
    "granularity": {"per_tensor": 0, "per_channel": 1},
    "init": {"linear": 0, "density": 1, "random": 2, "kmeans++": 3, "dp": 4},
    "method": {"lloyd": 0, "optimal": 1, "sklearn": 2},
}


def default_augment(augment: int | None, *, pruning: bool, all_pruned: bool = False) -> int:
    """The synthetic token rows per real one that a calibration pass runs with.

    Args:
        augment (int, optional): what the caller asked for; ``None`` picks the default.
        pruning (bool): whether the call prunes (else it shares).
        all_pruned (bool): whether every tensor the call shares is pruned already.

    Returns:
        ``augment`` itself, or :data:`AUGMENT_PRUNING`, :data:`AUGMENT_SHARING` or
        :data:`AUGMENT_SHARING_PRUNED` for ``None``.

    Example:
        >>> default_augment(None, pruning=True), default_augment(1, pruning=True)
        (3, 1)
        >>> default_augment(None, pruning=False), default_augment(None, pruning=False, all_pruned=True)
        (5, 0)
    """
    if augment is not None:
        return augment
    if pruning:
        return AUGMENT_PRUNING
    return AUGMENT_SHARING_PRUNED if all_pruned else AUGMENT_SHARING


def code_of(setting: str, value: str) -> int:
    """The byte code of a categorical setting's value.

    Args:
        setting (str): ``"granularity"``, ``"init"`` or ``"method"``.
        value (str): one of the setting's accepted values.

    Returns:
        The code, an ``int`` in [0, 255].

    Raises:
        ValueError: ``setting`` or ``value`` has no code.

    Example:
        >>> code_of("init", "kmeans++"), code_of("granularity", "per_channel")
        (3, 1)
    """
    table = _table(setting)
    if value not in table:
        raise ValueError(f"{setting} must be one of {tuple(table)}, got {value!r}")
    return table[value]


def value_of(setting: str, code: int) -> str:
    """The value a byte code of a categorical setting stands for (the inverse of :func:`code_of`).

    Args:
        setting (str): ``"granularity"``, ``"init"`` or ``"method"``.
        code (int): the stored code.

    Returns:
        The setting's value.

    Raises:
        ValueError: no value has this code.

    Example:
        >>> value_of("method", 1)
        'optimal'
    """
    table = _table(setting)
    for value, c in table.items():
        if c == code:
            return value
    raise ValueError(f"{setting} code must be one of {sorted(table.values())}, got {code!r}")


def _table(setting: str) -> dict[str, int]:
    if setting not in CODES:
        raise ValueError(f"setting must be one of {tuple(CODES)}, got {setting!r}")
    return CODES[setting]


def _state_tensor(state: Tensor) -> dict[str, Any]:
    """The settings of a :meth:`SharingConfig.to_state` tensor, codes decoded."""
    n = len(STATE_FIELDS)
    if state.dtype != torch.int64 or state.shape != (n,):
        raise ValueError(
            f"sharing state must be an int64 tensor of shape ({n},), got {state.dtype} "
            f"{tuple(state.shape)}"
        )
    values = dict(zip(STATE_FIELDS, state.tolist()))
    if values["version"] != STATE_VERSION:
        raise ValueError(
            f"sharing state version must be {STATE_VERSION}, got {values['version']} (written "
            "by a newer torchprune_share?)"
        )
    for setting in CODES:
        values[setting] = value_of(setting, values[setting])
    del values["version"]
    return values


def _int(field: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    what = "an int" + (f" in [{lo}, {hi}]" if lo is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{field} must be {what}, got {type(value).__name__}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ValueError(f"{field} must be {what}, got {value}")
    return int(value)


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, one of {allowed}, got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}")
    return value


def calibration_settings(algorithm: object, damping: object) -> tuple[str, float]:
    """Check the calibration settings by :class:`SharingConfig`'s rules (pruning uses them too).

    Args:
        algorithm (str): one of :data:`ALGORITHMS`.
        damping (float): in (0, 1].

    Returns:
        ``(algorithm, damping)`` normalised.

    Raises:
        TypeError: a wrong type. ValueError: a wrong value.

    Example:
        >>> calibration_settings("diagonal", 0.05)
        ('diagonal', 0.05)
    """
    config = SharingConfig(algorithm=algorithm, damping=damping)  # type: ignore[arg-type]
    return config.algorithm, config.damping


@dataclass(frozen=True)
class SharingConfig:
    r"""The settings of k-means weight sharing of one tensor, checked when built.

    Args:
        bits (int): at most ``2**bits`` centroids per codebook, in [1, 16]. Default: 4.
        granularity (str): ``"per_tensor"`` (one codebook) or ``"per_channel"`` (one per
            slice along ``channel_axis``). Default: ``"per_tensor"``.
        channel_axis (int): the channel dimension for ``"per_channel"``; any int here, its
            range is checked against a tensor by :meth:`check_tensor`. Default: 0.
        init (str): k-means initialisation, one of :data:`INITS`, or ``"auto"``: ``"linear"``
            (as in Deep Compression) without calibration data, ``"dp"`` (the optimal
            partition over a coarse grid, then Lloyd) with it, see :meth:`resolved`.
            Default: ``"auto"``.
        method (str): k-means method, one of :data:`METHODS`. Default: ``"lloyd"``.
        algorithm (str): how calibration data weighs the clustering, when given: one of
            :data:`ALGORITHMS`. Default: ``"hessian"``.
        damping (float): relative damping added to the calibration Hessian's diagonal
            (times its mean), in (0, 1]. Default: 0.1: with a few thousand calibration
            tokens it generalised better than GPTQ's 0.01 on a pretrained BERT (4-bit
            cosine 0.9936 vs 0.9930, 50 % pruning 0.9575 vs 0.9530; ``benchmarks/``).

    Raises:
        TypeError: a field has the wrong type (the message names it).
        ValueError: a field has a wrong value (the message names it and the accepted range).

    Example:
        >>> SharingConfig(bits=3, granularity="per_channel")
        SharingConfig(bits=3, granularity='per_channel', channel_axis=0, init='auto', method='lloyd', algorithm='hessian', damping=0.1)
        >>> SharingConfig(bits=99)
        Traceback (most recent call last):
        ...
        ValueError: bits must be an int in [1, 16], got 99
    """

    bits: int = 4
    granularity: str = "per_tensor"
    channel_axis: int = 0
    init: str = DEFAULT_INIT
    method: str = "lloyd"
    algorithm: str = DEFAULT_ALGORITHM
    damping: float = DEFAULT_DAMPING

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise numpy ints and the like to int once
        fix(self, "bits", _int("bits", self.bits, 1, MAX_BITS))
        fix(self, "granularity", _choice("granularity", self.granularity, GRANULARITIES))
        fix(self, "channel_axis", _int("channel_axis", self.channel_axis))
        fix(self, "init", _choice("init", self.init, (*INITS, AUTO)))
        fix(self, "method", _choice("method", self.method, METHODS))
        fix(self, "algorithm", _choice("algorithm", self.algorithm, ALGORITHMS))
        damping = self.damping
        if isinstance(damping, bool) or not isinstance(damping, numbers.Real):
            raise TypeError(f"damping must be a float in (0, 1], got {type(damping).__name__}")
        if not (math.isfinite(float(damping)) and 0.0 < float(damping) <= 1.0):
            raise ValueError(f"damping must be a float in (0, 1], got {damping}")
        fix(self, "damping", float(damping))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the settings, in order.

        Example:
            >>> SharingConfig.fields()[:3]
            ('bits', 'granularity', 'channel_axis')
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(
        cls, settings: Mapping[str, Any], *, base: SharingConfig | None = None
    ) -> SharingConfig:
        """Build a config from ``{field: value}``, the fields not given taken from ``base``.

        Args:
            settings (Mapping): some of the fields; any other key is an error.
            base (SharingConfig, optional): where the other fields come from; default the
                defaults.

        Returns:
            The new config.

        Raises:
            TypeError: ``settings`` is no mapping, has a key that is no field, or a wrong type.
            ValueError: a field has a wrong value.

        Example:
            >>> SharingConfig.from_mapping({"bits": 2}, base=SharingConfig(init="density")).init
            'density'
        """
        if not isinstance(settings, Mapping):
            raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
        unknown = sorted(str(k) for k in settings if k not in cls.fields())
        if unknown:
            raise TypeError(
                f"unknown sharing settings {unknown}; expected some of {list(cls.fields())}"
            )
        return dataclasses.replace(base or cls(), **settings)

    def replace(self, **changes: Any) -> SharingConfig:
        """A copy with some fields changed, validated again.

        Args:
            **changes: fields and their new values.

        Returns:
            The new config.

        Example:
            >>> SharingConfig(bits=4).replace(bits=2).bits
            2
        """
        return SharingConfig.from_mapping(changes, base=self)

    def resolved(self, calibrated: bool = False) -> SharingConfig:
        """These settings with ``init="auto"`` replaced by the init it stands for.

        Args:
            calibrated (bool): whether the codebooks are fitted to calibration data
                (``"auto"`` is then ``"dp"``) or not (``"linear"``). Default: False.

        Returns:
            ``self`` when ``init`` is not ``"auto"``, else a copy with the init set.

        Example:
            >>> SharingConfig().resolved().init, SharingConfig().resolved(calibrated=True).init
            ('linear', 'dp')
            >>> SharingConfig(init="density").resolved(calibrated=True).init
            'density'
        """
        if self.init != AUTO:
            return self
        return dataclasses.replace(self, init=CALIBRATED_INIT if calibrated else DATA_FREE_INIT)

    # -- the sharing state of a checkpoint ------------------------------------------------
    def to_state(self, num_centroids: int) -> Tensor:
        """These settings and a codebook size as a checkpoint stores them: a tensor.

        An ``int64`` tensor ``[version, bits, granularity, channel_axis, init, method,
        num_centroids]`` (categorical settings as their :data:`CODES`; :data:`STATE_FIELDS`
        names the entries), so that a ``state_dict`` holds only tensors (safetensors).
        The calibration settings are not stored: they only matter while clustering.

        Args:
            num_centroids (int): ``k``, the centroids per codebook.

        Returns:
            The 1-D ``int64`` tensor of :data:`STATE_FIELDS`.

        Example:
            >>> SharingConfig(bits=3, granularity="per_channel").to_state(8)
            tensor([1, 3, 1, 0, 0, 0, 8])
        """
        return torch.tensor(
            [
                STATE_VERSION,
                self.bits,
                CODES["granularity"][self.granularity],
                self.channel_axis,
                CODES["init"][self.resolved().init],
                CODES["method"][self.method],
                int(num_centroids),
            ],
            dtype=torch.int64,
        )

    @classmethod
    def from_state(cls, state: object) -> tuple[SharingConfig, int]:
        """Read the sharing state of a checkpoint: the tensor of :meth:`to_state`, or the
        dict of settings that 0.1.0 wrote.

        Args:
            state (Tensor or Mapping): the ``..._extra_state`` entry of a ``WeightSharing``.

        Returns:
            ``(config, num_centroids)``, every setting checked (``num_centroids`` in
            ``[0, 2**bits]``).

        Raises:
            TypeError: ``state`` is neither, or a setting has the wrong type.
            ValueError: a wrong length, version, code or value (the message names it).

        Example:
            >>> SharingConfig.from_state(torch.tensor([1, 2, 0, 0, 1, 0, 4]))
            (SharingConfig(bits=2, granularity='per_tensor', channel_axis=0, init='density', method='lloyd', algorithm='hessian', damping=0.1), 4)
        """
        if isinstance(state, Tensor):
            settings = _state_tensor(state)
        elif isinstance(state, Mapping):
            missing = [f for f in STATE_FIELDS[1:] if f not in state]
            if missing:
                raise ValueError(
                    f"sharing state lacks {missing}; expected {list(STATE_FIELDS[1:])}"
                )
            settings = {f: state[f] for f in STATE_FIELDS[1:]}
        else:
            raise TypeError(
                f"sharing state must be an int64 tensor or a dict, got {type(state).__name__}"
            )
        k = settings.pop("num_centroids")
        config = cls.from_mapping(settings)
        k = _int("num_centroids", k)
        if not 0 <= k <= 2**config.bits:
            raise ValueError(
                f"num_centroids must be an int in [0, 2**bits = {2**config.bits}], got {k}"
            )
        return config, k

    def channel_dim(self, ndim: int) -> int:
        """``channel_axis`` as a non-negative dimension of an ``ndim``-D tensor.

        Args:
            ndim (int): the tensor's number of dimensions.

        Returns:
            The dimension, in ``[0, ndim)`` (0 for a 0-D tensor).

        Example:
            >>> SharingConfig(channel_axis=-1).channel_dim(4)
            3
        """
        return self.channel_axis % max(ndim, 1)

    def check_tensor(self, ndim: int) -> None:
        """Raise ``ValueError`` unless these settings can share an ``ndim``-D tensor.

        Args:
            ndim (int): the tensor's number of dimensions.

        Example:
            >>> SharingConfig(granularity="per_channel", channel_axis=2).check_tensor(2)
            Traceback (most recent call last):
            ...
            ValueError: channel_axis must be in [-2, 1] for a 2-D tensor, got 2
        """
        if self.granularity != "per_channel":
            return
        if ndim == 0:
            raise ValueError(
                'granularity="per_channel" needs a tensor with at least one dimension; use '
                '"per_tensor" for a 0-D tensor'
            )
        if not -ndim <= self.channel_axis < ndim:
            raise ValueError(
                f"channel_axis must be in [{-ndim}, {ndim - 1}] for a {ndim}-D tensor, "
                f"got {self.channel_axis}"
            )
