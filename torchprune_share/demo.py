"""The end-to-end Deep Compression demo behind ``torchprune-share demo``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import compressed_tensors
from .data import load_digits, load_mnist, make_loaders
from .models import build_model
from .pruning import level_prune
from .sharing import register_weight_sharing
from .training import evaluate, train

__all__ = ["DemoConfig", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the command line's ``demo`` options)."""

    model: str = "lenet300"
    data: str = "digits"
    data_dir: str | None = None
    out: str = "torchprune-share-out"
    seed: int = 0
    max_drop: float = 1.0
    epochs: int | None = None
    progress: bool = True
    sparsity: float = 0.8
    bits: int = 4


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Train, prune, share and fine-tune a small model; report accuracy and sparsity.

    Args:
        config (DemoConfig): the settings.

    Returns:
        A dict of results, with the printable summary under ``"table"``.

    Example:
        >>> r = run_demo(DemoConfig(progress=False, out="/tmp/tps-demo"))  # doctest: +SKIP
        >>> r["accuracy"]["final"] > 90  # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    splits = (
        load_mnist(config.data_dir) if config.data == "mnist" else load_digits(seed=config.seed)
    )
    train_loader, _val_loader, test_loader = make_loaders(splits, seed=config.seed)
    model = build_model(config.model, splits.image_size)
    epochs = config.epochs or (30 if config.data == "digits" else 5)
    p = config.progress
    train(model, train_loader, epochs=epochs, lr=0.05, progress=p, desc="train")
    acc_dense, _ = evaluate(model, test_loader)

    weights = [
        (m, "weight")
        for m in model.modules()
        if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.dim() >= 2
    ]
    for m, n in weights:
        level_prune(m, n, amount=config.sparsity)
    acc_pruned_raw, _ = evaluate(model, test_loader)
    train(
        model,
        train_loader,
        epochs=max(1, epochs // 2),
        lr=0.02,
        progress=p,
        desc="fine-tune pruned",
    )
    acc_pruned, _ = evaluate(model, test_loader)
    for m, n in weights:
        register_weight_sharing(m, n, bits=config.bits)
    acc_shared_raw, _ = evaluate(model, test_loader)
    train(
        model,
        train_loader,
        epochs=max(1, epochs // 3),
        lr=0.01,
        progress=p,
        desc="fine-tune codebooks",
    )
    acc_final, _ = evaluate(model, test_loader)

    rows = []
    for q, module, name, _ in compressed_tensors(model):
        w = getattr(module, name).detach()
        nz = w[w != 0]
        rows.append((q, w.numel(), float((w == 0).float().mean()), int(torch.unique(nz).numel())))
    lines = [f"{'tensor':<14} {'weights':>8} {'sparsity':>9} {'distinct':>9}"]
    lines += [f"{q:<14} {n:>8} {s:>9.1%} {d:>9}" for q, n, s, d in rows]
    lines.append(
        f"accuracy (test): dense {acc_dense:.2f}% | pruned {acc_pruned_raw:.2f}% -> fine-tuned "
        f"{acc_pruned:.2f}% | shared {acc_shared_raw:.2f}% -> fine-tuned {acc_final:.2f}%"
    )
    result = {
        "config": asdict(config),
        "accuracy": {
            "dense": acc_dense,
            "pruned": acc_pruned_raw,
            "pruned_finetuned": acc_pruned,
            "shared": acc_shared_raw,
            "final": acc_final,
        },
        "tensors": [dict(zip(("name", "weights", "sparsity", "distinct"), r)) for r in rows],
        "seconds": time.perf_counter() - start,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    result["table"] = "\n".join(lines)
    return result
