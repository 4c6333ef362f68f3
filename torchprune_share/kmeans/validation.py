"""Argument checks of the public k-means functions (the only place they live).

Everything is checked once, at the public boundary; the numeric modules of
this package then trust their inputs. A wrong type raises ``TypeError``, a
wrong value ``ValueError``; every message names the argument and what it
accepts.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["INITS", "METHODS", "check_int", "check_kmeans_args", "check_sse_args"]

INITS = ("linear", "density", "random", "kmeans++", "dp")
METHODS = ("lloyd", "optimal", "sklearn")


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, if it is an int (not a bool) >= ``minimum``.

    Example:
        >>> check_int("k", 4, 1)
        4
        >>> check_int("k", "2", 1)
        Traceback (most recent call last):
        ...
        TypeError: k must be an int >= 1, got str
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_data(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in (1, 2):
        raise ValueError(f"x must be 1-D (n,) or 2-D (B, n), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")


def _check_weight(sample_weight: object, x: torch.Tensor, all_zero_ok: bool) -> None:
    if sample_weight is None:
        return
    if not isinstance(sample_weight, torch.Tensor):
        raise TypeError(
            f"sample_weight must be a torch.Tensor or None, got {type(sample_weight).__name__}"
        )
    if sample_weight.is_complex():
        raise TypeError("sample_weight must be a real tensor, got a complex one")
    if sample_weight.shape != x.shape:
        raise ValueError(
            f"sample_weight must have x's shape {tuple(x.shape)}, got {tuple(sample_weight.shape)}"
        )
    w = sample_weight.detach()
    if w.is_floating_point() and not bool(torch.isfinite(w).all()):
        raise ValueError("sample_weight must be finite and >= 0: it contains NaN or Inf")
    if bool((w < 0).any()):
        raise ValueError("sample_weight must be finite and >= 0: it has negative entries")
    if not all_zero_ok and not bool((w != 0).any()):
        raise ValueError("sample_weight is zero everywhere: no point to cluster (1-D x)")


def check_kmeans_args(
    x: object,
    k: object,
    init: object,
    method: object,
    max_iter: object,
    tol: object,
    sample_weight: object,
    generator: object,
) -> None:
    """Check the arguments of :func:`~torchprune_share.kmeans.kmeans1d`.

    Finiteness of ``x`` is checked later, on the sorted data, where it is
    cheap (the ends of every sorted row).

    Example:
        >>> check_kmeans_args(torch.zeros(3), 2, "linear", "lloyd", 300, "x", None, None)
        Traceback (most recent call last):
        ...
        TypeError: tol must be a real number >= 0, got str
    """
    _check_data(x)
    check_int("k", k, 1)
    check_int("max_iter", max_iter, 1)
    _check_choice("init", init, INITS)
    _check_choice("method", method, METHODS)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number >= 0, got {type(tol).__name__}")
    if not tol >= 0.0:  # also rejects NaN
        raise ValueError(f"tol must be a real number >= 0, got {tol!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    _check_weight(sample_weight, x, all_zero_ok=x.dim() == 2)


def check_sse_args(x: object, centroids: object, labels: object, sample_weight: object) -> None:
    """Check the arguments of :func:`~torchprune_share.kmeans.sse`.

    Example:
        >>> check_sse_args(torch.zeros(3), torch.zeros(2), torch.zeros(3), None)
        Traceback (most recent call last):
        ...
        TypeError: labels must be an integer tensor, got dtype torch.float32
    """
    for name, t in (("x", x), ("centroids", centroids), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if x.dim() not in (1, 2) or labels.shape != x.shape:
        raise ValueError(
            f"x must be 1-D or 2-D and labels of its shape, got {tuple(x.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if centroids.dim() != x.dim() or (x.dim() == 2 and centroids.shape[0] != x.shape[0]):
        raise ValueError(
            f"centroids must be (k,) for 1-D x or (B, k) for 2-D x, got {tuple(centroids.shape)}"
        )
    k = centroids.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k - 1}] (k = {k} centroids)")
    _check_weight(sample_weight, x, all_zero_ok=True)
