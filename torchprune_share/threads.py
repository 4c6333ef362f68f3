"""How many threads a numba kernel may use: the one rule both kernel families follow.

numba refuses ``set_num_threads`` above ``NUMBA_NUM_THREADS`` (fixed when numba starts), so
every request is clamped to [1, that limit] here, and nowhere else.
"""

from __future__ import annotations

__all__ = ["numba_threads"]


def numba_threads(requested: int) -> int:
    """``requested`` clamped to the threads numba can run (1 without numba).

    Args:
        requested (int): the threads asked for (e.g. ``torch.get_num_threads()``).

    Returns:
        An ``int`` in ``[1, numba.config.NUMBA_NUM_THREADS]``.

    Example:
        >>> numba_threads(0), numba_threads(1)
        (1, 1)
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - the callers fall back to torch then
        return 1
    return max(1, min(int(requested), numba.config.NUMBA_NUM_THREADS))
