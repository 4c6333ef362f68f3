"""The demo's training stages: dense training, AGP pruning, weight sharing, the file.

Each stage is one step of Deep Compression as :func:`torchprune_share.demo.run_demo`
runs it, usable on its own (``benchmarks/deep_compression_mnist.py`` chains them on MNIST).
All learning rates decay on a cosine over the stage's steps.

Example:
    >>> from torchprune_share.demo.data import load_digits, make_loaders
    >>> from torchprune_share.demo.models import LeNet300100
    >>> _ = torch.manual_seed(0)
    >>> train_loader, _, test_loader = make_loaders(load_digits())
    >>> model = train_dense(LeNet300100(8), train_loader, epochs=5, lr=0.05, progress=False)
    >>> _ = prune_agp(model, {"fc1.weight": 0.9}, train_loader, epochs=1, lr=0.025, progress=False)
    >>> _ = share_and_finetune(model, {"fc1.weight": 4}, train_loader, test_loader, epochs=1,
    ...                        progress=False)
    >>> size, acc, identical = save_and_reload(model, lambda: LeNet300100(8), "m.tpsc",
    ...                                        test_loader)
    >>> identical, acc > 80
    (True, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import (
    AGPSchedule,
    LevelPruner,
    Quantizer,
    inference_summary,
    load_compressed,
    save_compressed,
)
from ..training import evaluate, train

__all__ = ["prune_agp", "save_and_reload", "share_and_finetune", "train_dense"]


def _sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def _train_cosine(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    progress: bool,
    desc: str,
    after_step: Callable[[int], None] | None = None,
) -> nn.Module:
    """:func:`train` with the learning rate decaying on a cosine over all its steps."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * len(loader)))

    def step(t: int) -> None:
        sched.step()
        if after_step is not None:
            after_step(t)

    return train(
        model,
        loader,
        epochs=epochs,
        optimizer=optimizer,
        after_step=step,
        progress=progress,
        desc=desc,
    )


def train_dense(
    model: nn.Module, train_loader: Any, *, epochs: int, lr: float, progress: bool = True
) -> nn.Module:
    """Train from scratch: SGD with momentum 0.9, weight decay 1e-4, cosine learning rate.

    Args:
        model (nn.Module): the model, trained in place.
        train_loader: training batches.
        epochs (int): passes over the data.
        lr (float): the initial learning rate.
        progress (bool): show a progress bar.

    Returns:
        ``model``.

    Example:
        >>> from torchprune_share.demo.data import load_digits, make_loaders
        >>> from torchprune_share.demo.models import LeNet300100
        >>> _ = torch.manual_seed(0)
        >>> train_loader, _, test_loader = make_loaders(load_digits())
        >>> model = train_dense(LeNet300100(8), train_loader, epochs=5, lr=0.05, progress=False)
        >>> evaluate(model, test_loader)[0] > 80
        True
    """
    return _train_cosine(model, train_loader, _sgd(model, lr), epochs, progress, "train dense")


def prune_agp(
    model: nn.Module,
    sparsities: dict[str, float],
    train_loader: Any,
    *,
    epochs: int,
    lr: float,
    progress: bool = True,
) -> LevelPruner:
    """Prune to per-tensor sparsities along AGP ramps while fine-tuning (Zhu & Gupta).

    The ramps end after 60 % of the steps, pruning four times per epoch; the rest of the
    steps fine-tune at the final sparsity. The learning rate decays on a cosine.

    Args:
        model (nn.Module): the model, pruned in place.
        sparsities (dict): ``{tensor name: final sparsity}``.
        train_loader: training batches.
        epochs (int): fine-tuning epochs.
        lr (float): SGD learning rate (momentum 0.9).
        progress (bool): show a progress bar.

    Returns:
        The :class:`~torchprune_share.LevelPruner` used.

    Example:
        >>> from torchprune_share.demo.data import load_digits, make_loaders
        >>> from torchprune_share.demo.models import LeNet300100
        >>> model, train_loader = LeNet300100(8), make_loaders(load_digits())[0]
        >>> _ = prune_agp(model, {"fc1.weight": 0.8, "fc2.weight": 0.5}, train_loader,
        ...               epochs=1, lr=0.025, progress=False)
        >>> [round(float((w == 0).float().mean()), 3) for w in (model.fc1.weight, model.fc2.weight)]
        [0.8, 0.5]
    """
    steps = max(1, epochs * len(train_loader))
    end = max(1, int(steps * 0.6))
    freq = max(1, len(train_loader) // 4)
    pruner = LevelPruner(
        [
            [n, AGPSchedule(0.0, s, start_step=0, end_step=end, frequency=freq)]
            for n, s in sparsities.items()
        ],
        model=model,
    )
    pruner.prune(model, step=0)
    _train_cosine(
        model,
        train_loader,
        _sgd(model, lr),
        epochs,
        progress,
        "prune (AGP)",
        after_step=lambda t: pruner.prune(model, step=t),
    )
    pruner.prune(model, step=end)
    return pruner


def share_and_finetune(
    model: nn.Module,
    bits: dict[str, int],
    train_loader: Any,
    test_loader: Any,
    *,
    epochs: int,
    lr: float = 1e-3,
    method: str = "lloyd",
    granularity: str | dict[str, str] = "per_tensor",
    progress: bool = True,
) -> tuple[float, float]:
    """Share each named tensor at its bits, then fine-tune (codebooks and the rest).

    The learning rate decays on a cosine over the fine-tuning steps.

    Adam, not SGD: a centroid's gradient is the *sum* of its weights' gradients (Deep
    Compression's Eq. 3), hundreds of times a weight's, and Adam's per-parameter scaling
    makes one learning rate fit codebooks and biases alike.

    Args:
        model (nn.Module): the (pruned) model, changed in place.
        bits (dict): ``{tensor name: bits}``.
        train_loader, test_loader: the data.
        epochs (int): fine-tuning epochs.
        lr (float): Adam's learning rate. Default: 1e-3.
        method (str): k-means method. Default: ``"lloyd"``.
        granularity (str or dict): ``"per_tensor"`` or ``"per_channel"``, for all tensors
            or per tensor name (others per tensor).
        progress (bool): show a progress bar.

    Returns:
        ``(accuracy right after sharing, accuracy after fine-tuning)`` on ``test_loader``.

    Example:
        >>> from torchprune_share.demo.data import load_digits, make_loaders
        >>> from torchprune_share.demo.models import LeNet300100
        >>> train_loader, _, test_loader = make_loaders(load_digits())
        >>> model = train_dense(LeNet300100(8), train_loader, epochs=5, lr=0.05, progress=False)
        >>> shared, tuned = share_and_finetune(model, {"fc1.weight": 3, "fc2.weight": 2},
        ...                                    train_loader, test_loader, epochs=1,
        ...                                    progress=False)
        >>> model.fc1.weight.unique().numel(), model.fc2.weight.unique().numel()
        (8, 4)
    """
    per_name = granularity if isinstance(granularity, dict) else {}
    default = granularity if isinstance(granularity, str) else "per_tensor"
    options = [(n, b, {"granularity": per_name.get(n, default)}) for n, b in bits.items()]
    quantizer = Quantizer(options, method=method)
    with torch.no_grad():
        quantizer.quantize(model)
    shared = evaluate(model, test_loader)[0]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    _train_cosine(model, train_loader, opt, epochs, progress, "fine-tune codebooks")
    return shared, evaluate(model, test_loader)[0]


def save_and_reload(
    model: nn.Module, build: Callable[[], nn.Module], path: str | Path, test_loader: Any
) -> tuple[int, float, bool]:
    """Save ``model`` compressed, load the file into ``build()``, and compare.

    Args:
        model (nn.Module): the compressed model.
        build (callable): returns a freshly built model of the same architecture.
        path (str or Path): the file to write.
        test_loader: batches to evaluate the reloaded model on.

    Returns:
        ``(file bytes, reloaded test accuracy, whether outputs are bitwise identical)``.

    Example:
        >>> from torchprune_share import level_prune
        >>> from torchprune_share.demo.data import load_digits, make_loaders
        >>> from torchprune_share.demo.models import LeNet300100
        >>> test_loader = make_loaders(load_digits())[2]
        >>> model = LeNet300100(8)
        >>> _ = level_prune(model.fc1, "weight", 0.9)
        >>> size, acc, identical = save_and_reload(model, lambda: LeNet300100(8), "m.tpsc",
        ...                                        test_loader)
        >>> identical, size == Path("m.tpsc").stat().st_size
        (True, True)
    """
    size = save_compressed(model, path)
    fresh = load_compressed(build(), path)
    acc = evaluate(fresh, test_loader)[0]
    model.eval()
    fresh.eval()
    with torch.no_grad():
        identical = all(torch.equal(model(x), fresh(x)) for x, _ in test_loader)
    return size, acc, identical


def measure_inference(
    path: str | Path, build: Callable[[], nn.Module], sample: torch.Tensor, repeats: int = 200
) -> dict[str, float]:
    """Batch-1 latency and weight bytes of the file loaded dense vs for compressed inference.

    The compressed model comes from ``load_compressed(..., inference=True,
    backend="auto")``: each layer runs dense, torch CSR or the compressed kernel, whichever
    was fastest for it here, so no layer is slower than dense. Calls alternate between
    the two models so that both see the same machine load; the medians are reported.

    Args:
        path (str or Path): a ``.tpsc`` file.
        build (callable): returns a freshly built model of the same architecture.
        sample (Tensor): inputs; the first one is used.
        repeats (int): timed calls per model. Default: 200.

    Returns:
        ``{"dense_us", "compressed_us", "dense_bytes", "compressed_bytes"}``: median
        latency in microseconds and the bytes the converted layers' weights take.

    Example:
        >>> from torchprune_share import level_prune, save_compressed
        >>> from torchprune_share.demo.models import LeNet300100
        >>> model = LeNet300100(8)
        >>> _ = level_prune(model.fc1, "weight", 0.9)
        >>> _ = save_compressed(model, "m.tpsc")
        >>> r = measure_inference("m.tpsc", lambda: LeNet300100(8), torch.randn(1, 1, 8, 8), 5)
        >>> r["compressed_bytes"] <= r["dense_bytes"] + 1024
        True
    """
    dense = load_compressed(build(), path, bake=True).eval()
    fast = load_compressed(build(), path, inference=True, backend="auto").eval()
    x = sample[:1]
    times: dict[str, list[float]] = {"dense": [], "compressed": []}
    with torch.inference_mode():
        for m in (dense, fast):
            m(x)  # the first call compiles the kernels
        for _ in range(repeats):
            for label, m in (("dense", dense), ("compressed", fast)):
                t = time.perf_counter()
                m(x)
                times[label].append(time.perf_counter() - t)
    summary = inference_summary(fast)
    return {
        "dense_us": 1e6 * statistics.median(times["dense"]),
        "compressed_us": 1e6 * statistics.median(times["compressed"]),
        "dense_bytes": float(summary.dense_bytes),
        "compressed_bytes": float(summary.nbytes),
    }
