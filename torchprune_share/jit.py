"""numba, when it is installed: whether it is, how every kernel compiles, how many threads one uses.

The three kernel modules (``calibration.kernels``, ``inference.kernels``, ``kmeans.kernels``)
take these from here; each keeps its own torch or numpy fallback for :data:`AVAILABLE`
``False``.
"""

from __future__ import annotations

__all__ = ["AVAILABLE", "JIT", "numba_threads"]

try:  # optional: every caller has a torch or numpy fallback
    import numba
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    numba = None

AVAILABLE = numba is not None

# nogil: kernels run beside torch threads; cache: compiled once per install, not per
# process; error_model "numpy": divisions give inf/nan as numpy does, with no exception
# check inside the loops.
JIT = {"nogil": True, "cache": True, "error_model": "numpy"}


def numba_threads(requested: int) -> int:
    """``requested`` clamped to the threads numba can run (1 without numba).

    numba refuses ``set_num_threads`` above ``NUMBA_NUM_THREADS`` (fixed when it starts).

    Args:
        requested (int): the threads asked for (e.g. ``torch.get_num_threads()``).

    Returns:
        An ``int`` in ``[1, numba.config.NUMBA_NUM_THREADS]``.

    Example:
        >>> numba_threads(0), numba_threads(1)
        (1, 1)
    """
    if numba is None:  # pragma: no cover - the callers fall back to torch then
        return 1
    return max(1, min(int(requested), numba.config.NUMBA_NUM_THREADS))
