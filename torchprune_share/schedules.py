"""Sparsity schedules: the target sparsity of a tensor as a function of the training step.

A schedule is plain data with one method, :meth:`SparsitySchedule.sparsity`; the
:class:`~torchprune_share.policies.LevelPruner` asks it for the target at each step and
prunes up to it. Sparsities are fractions of the tensor's total size.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod

__all__ = ["AGPSchedule", "ConstantSchedule", "SparsitySchedule"]


def _check_sparsity(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a float in [0, 1], got {value}")
    return float(value)


def _check_step(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


class SparsitySchedule(ABC):
    """The target sparsity of a tensor at each training step.

    Subclasses implement :meth:`sparsity` and set :attr:`final`, the sparsity reached last.

    Example:
        >>> class Linear(SparsitySchedule):  # a linear ramp to 0.8 over 100 steps
        ...     final = 0.8
        ...     def sparsity(self, step):
        ...         return self.final * min(step, 100) / 100
        >>> Linear().sparsity(50)
        0.4
    """

    final: float

    @abstractmethod
    def sparsity(self, step: int) -> float:
        """The target sparsity (fraction of all entries pruned) at ``step``.

        Args:
            step (int): the training step.

        Returns:
            A float in [0, 1].

        Example:
            >>> AGPSchedule(0.0, 0.9, 0, 10).sparsity(10)
            0.9
        """


class ConstantSchedule(SparsitySchedule):
    r"""One sparsity from ``start_step`` on (zero before).

    Args:
        sparsity (float): the target, in [0, 1].
        start_step (int): the first step at which it applies. Default: 0.

    Example:
        >>> s = ConstantSchedule(0.8, start_step=10)
        >>> s.sparsity(9), s.sparsity(10), s.sparsity(10_000)
        (0.0, 0.8, 0.8)
    """

    def __init__(self, sparsity: float, start_step: int = 0) -> None:
        self.final = _check_sparsity("sparsity", sparsity)
        self.start_step = _check_step("start_step", start_step, 0)

    def sparsity(self, step: int) -> float:
        return self.final if step >= self.start_step else 0.0

    def __repr__(self) -> str:
        return f"ConstantSchedule({self.final}, start_step={self.start_step})"


class AGPSchedule(SparsitySchedule):
    r"""Zhu & Gupta's automated gradual pruning (AGP), a cubic ramp.

    At the pruning steps :math:`t \in \{t_0, t_0 + \Delta t, \dots\}` up to the end step
    :math:`t_e = t_0 + n\Delta t`, the target is

    .. math::
        s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_e - t_0}\right)^3,

    held constant until the next pruning step; exactly ``final`` from ``end_step`` on
    (``end_step`` is a pruning step even when ``end_step - start_step`` is not a
    multiple of ``frequency``), and 0 before ``start_step``.

    Args:
        initial (float): :math:`s_i`, the sparsity at ``start_step``.
        final (float): :math:`s_f`, the sparsity from ``end_step`` on; ``>= initial``.
        start_step (int): :math:`t_0`.
        end_step (int): :math:`t_e`, ``> start_step``.
        frequency (int): :math:`\Delta t`, steps between pruning steps. Default: 1.

    Example:
        >>> s = AGPSchedule(0.0, 0.8, start_step=0, end_step=100, frequency=10)
        >>> s.sparsity(0), round(s.sparsity(15), 4), s.sparsity(100)
        (0.0, 0.2168, 0.8)
    """

    def __init__(
        self, initial: float, final: float, start_step: int, end_step: int, frequency: int = 1
    ) -> None:
        self.initial = _check_sparsity("initial", initial)
        self.final = _check_sparsity("final", final)
        if self.final < self.initial:
            raise ValueError(f"final ({final}) must be >= initial ({initial})")
        self.start_step = _check_step("start_step", start_step, 0)
        self.end_step = _check_step("end_step", end_step, self.start_step + 1)
        self.frequency = _check_step("frequency", frequency, 1)

    def sparsity(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.final
        t = self.start_step + (step - self.start_step) // self.frequency * self.frequency
        span = self.end_step - self.start_step
        # Written from s_i so that start_step gives exactly ``initial`` (and end_step exactly
        # ``final``, above): s_i + (s_f - s_i)(1 - (1 - x)^3) equals the formula.
        return self.initial + (self.final - self.initial) * (
            1.0 - (1.0 - (t - self.start_step) / span) ** 3
        )

    def pruning_steps(self) -> list[int]:
        """The steps at which the target changes: ``start_step``, every ``frequency``, ``end_step``.

        Returns:
            The sorted steps.

        Example:
            >>> AGPSchedule(0.0, 0.5, 0, 10, frequency=4).pruning_steps()
            [0, 4, 8, 10]
        """
        steps = list(range(self.start_step, self.end_step, self.frequency))
        return [*steps, self.end_step]

    def __repr__(self) -> str:
        return (
            f"AGPSchedule({self.initial}, {self.final}, start_step={self.start_step}, "
            f"end_step={self.end_step}, frequency={self.frequency})"
        )
