"""Minimal training and evaluation loops.

:func:`evaluate` follows the dnn-compression-style ``validate_func(model, val_loader,
criterion) -> (accuracy, loss)`` convention that the sensitivity analyses take (and is
their default); :func:`train` is a plain loop with a per-step hook for pruning schedules.
Neither knows any data set or model (the demo's are in :mod:`torchprune_share.demo`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["evaluate", "train"]

logger = logging.getLogger(__name__)


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """Top-1 accuracy (percent) and mean loss of ``model`` on ``loader``.

    This is the ``validate_func(model, val_loader, criterion)`` the analysis functions take.
    Runs under ``torch.inference_mode()`` in eval mode and restores the training mode.

    Args:
        model (nn.Module): the classifier.
        loader (Iterable): yields ``(inputs, labels)``.
        criterion (callable, optional): loss; default cross-entropy.
        max_batches (int, optional): stop after this many batches.

    Returns:
        ``(accuracy, loss)``, accuracy in percent.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])
        >>> acc, loss = evaluate(model, [(x, y)])
        >>> round(acc, 2), round(loss, 4)
        (66.67, 0.6466)
    """
    criterion = criterion or nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                out = model(x)
                loss_sum += float(criterion(out, y)) * len(y)
                correct += int((out.argmax(1) == y).sum())
                total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("loader yielded no samples")
    return 100.0 * correct / total, loss_sum / total


def train(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.01,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` for ``epochs`` epochs (SGD with momentum unless given an optimizer).

    Args:
        model (nn.Module): the model.
        loader (Iterable): yields ``(inputs, labels)``.
        epochs (int): passes over ``loader``. Default: 1.
        optimizer (Optimizer, optional): default ``SGD(lr, momentum=0.9)``.
        lr (float): learning rate of the default optimizer. Default: 0.01.
        criterion (callable, optional): loss; default cross-entropy.
        after_step (callable, optional): called with the global step after each optimizer
            step (e.g. a pruning schedule).
        progress (bool): show a tqdm bar. Default: True.
        desc (str): the bar's label.

    Returns:
        ``model``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 2)
        >>> batches = [(x, (x[:, 0] > x[:, 1]).long())]
        >>> model = nn.Linear(2, 2)
        >>> before = evaluate(model, batches)[1]
        >>> _ = train(model, batches, epochs=50, lr=0.1, progress=False)
        >>> evaluate(model, batches)[1] < before / 2
        True
    """
    criterion = criterion or nn.CrossEntropyLoss()
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    step = 0
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        total = 0.0
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            total += float(loss.detach())
            if after_step is not None:
                after_step(step)
        logger.debug("%s epoch %d: mean loss %.4f", desc, epoch, total / max(1, step))
    return model
