"""The end-to-end Deep Compression pipeline behind ``torchprune-share demo``.

train -> pruning sensitivity scan -> per-layer sparsities -> AGP pruning with fine-tuning
-> bits scan -> weight sharing with per-layer bits -> codebook fine-tuning -> compressed
file -> reload into a fresh model and re-evaluate. :func:`run_demo` runs the stages in
that order; each stage is a function of its own below (the training ones in
:mod:`.stages`).

Example:
    >>> config = DemoConfig(epochs=1, prune_epochs=1, share_epochs=1, progress=False,
    ...                     sparsities={"fc1.weight": 0.9}, bits={"fc1.weight": 4}, out="o")
    >>> r = run_demo(config)
    >>> r["sparsities"], r["bits"], r["reloaded_outputs_identical"]
    ({'fc1.weight': 0.9}, {'fc1.weight': 4}, True)
    >>> sorted(p.name for p in Path("o").iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['bits_sensitivity.csv', 'bits_sensitivity.png', 'model.tpsc', 'prune_sensitivity.csv',
     'prune_sensitivity.png', 'results.json', 'summary.csv', 'summary.md']
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The demo uses the library's public names only, so that it keeps working whatever the
# library's internal modules are.
from .. import (
    CompressionReport,
    compression_report,
    perform_bits_analysis,
    perform_sensitivity_analysis,
    recommend_bits,
    recommend_sparsities,
)
from ..atomic import atomic_write_text
from ..training import evaluate
from .data import BatchLoader, Splits, load_digits, load_mnist, make_loaders
from .models import build_model
from .stages import (
    measure_inference,
    prune_agp,
    save_and_reload,
    share_and_finetune,
    train_dense,
)

__all__ = ["SCAN_BITS", "SCAN_SPARSITIES", "DemoConfig", "run_demo"]

logger = logging.getLogger(__name__)

SCAN_SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97]
SCAN_BITS = [8, 7, 6, 5, 4, 3, 2]


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the command line's ``demo`` options).

    ``sparsities`` / ``bits`` (``{tensor: value}``) fix the per-layer choices instead of
    deriving them from the scans (which still run and are still written); ``epochs``,
    ``prune_epochs`` and ``share_epochs`` default per data set (40/40/15 on digits,
    10/10/4 on MNIST); ``threads`` defaults to 1 on digits. Derived sparsities are capped
    at ``max_sparsity`` and derived bits floored at ``min_bits``; ``max_drop`` is the
    validation accuracy (points) a layer may lose in each scan.

    Example:
        >>> c = DemoConfig(model="lenet5", seed=1)
        >>> c.data, c.out, _defaults(c)
        ('digits', 'torchprune-share-out', (40, 40, 15))
    """

    model: str = "lenet300"
    data: str = "digits"
    data_dir: str | None = None
    out: str = "torchprune-share-out"
    seed: int = 0
    max_drop: float = 2.0
    epochs: int | None = None
    threads: int | None = None
    progress: bool = True
    prune_epochs: int | None = None
    share_epochs: int | None = None
    lr: float = 0.05
    batch_size: int = 64
    sparsities: dict[str, float] | None = None
    bits: dict[str, int] | None = None
    max_sparsity: float = 0.97
    min_bits: int = 3
    method: str = "lloyd"
    granularity: str = "per_tensor"


def _defaults(config: DemoConfig) -> tuple[int, int, int]:
    if config.data == "digits":
        return config.epochs or 40, config.prune_epochs or 40, config.share_epochs or 15
    return config.epochs or 10, config.prune_epochs or 10, config.share_epochs or 4


def _load(config: DemoConfig) -> Splits:
    if config.data == "mnist":
        if config.data_dir is None:
            raise FileNotFoundError("--data mnist needs --data-dir DIR with the MNIST IDX files")
        return load_mnist(config.data_dir, seed=config.seed)
    if config.data != "digits":
        raise ValueError(f"data must be 'digits' or 'mnist', got {config.data!r}")
    return load_digits(seed=config.seed)


def _dense_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


@dataclass
class _Run:
    """What the stages of one :func:`run_demo` share: settings, data, model, results."""

    config: DemoConfig
    out: Path
    splits: Splits
    train_loader: BatchLoader
    val_loader: BatchLoader
    test_loader: BatchLoader
    model: nn.Module
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def lap(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block as ``stage`` (kept only if the block succeeds)."""
        t0 = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - t0, 2)
        logger.info("%s: %.1f s", stage, self.seconds[stage])


def _prepare(config: DemoConfig) -> _Run:
    """Threads, output folder, global seed, data, loaders and the untrained model."""
    # Small models run fastest on one thread; two-thread OpenMP regions can stall for
    # milliseconds when the machine is busy.
    threads = config.threads or (1 if config.data == "digits" else None)
    if threads:
        torch.set_num_threads(threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    splits = _load(config)
    loaders = make_loaders(splits, batch_size=config.batch_size, seed=config.seed)
    return _Run(config, out, splits, *loaders, build_model(config.model, splits.image_size))


def _choose_sparsities(run: _Run) -> dict[str, float]:
    """Scan pruning sensitivity, write it, and pick each layer's sparsity."""
    config = run.config
    sens = perform_sensitivity_analysis(
        run.model,
        run.val_loader,
        SCAN_SPARSITIES,
        evaluate,
        nn.CrossEntropyLoss(),
        progress=config.progress,
    )
    sens.to_png(run.out / "prune_sensitivity.png")
    sens.to_csv(run.out / "prune_sensitivity.csv")
    if config.sparsities is not None:
        return dict(config.sparsities)
    return {
        n: min(s, config.max_sparsity)
        for n, s in recommend_sparsities(sens, max_drop=config.max_drop)
    }


def _choose_bits(run: _Run, sparsities: dict[str, float]) -> dict[str, int]:
    """Scan bit-width sensitivity, write it, and pick each pruned layer's bits."""
    config = run.config
    bits_scan = perform_bits_analysis(
        run.model,
        run.val_loader,
        SCAN_BITS,
        evaluate,
        nn.CrossEntropyLoss(),
        method=config.method,
        granularity=config.granularity,
        progress=config.progress,
    )
    bits_scan.to_png(run.out / "bits_sensitivity.png")
    bits_scan.to_csv(run.out / "bits_sensitivity.csv")
    if config.bits is not None:
        return dict(config.bits)
    chosen = dict(recommend_bits(bits_scan, max_drop=config.max_drop))
    return {n: max(chosen.get(n, max(SCAN_BITS)), config.min_bits) for n in sparsities}


def _write_file(run: _Run) -> tuple[int, bool, CompressionReport]:
    """Write ``model.tpsc``, reload it into a fresh model, and write its report."""
    path = run.out / "model.tpsc"
    size, run.accuracy["reloaded"], identical = save_and_reload(
        run.model,
        lambda: build_model(run.config.model, run.splits.image_size),
        path,
        run.test_loader,
    )
    report = compression_report(path)
    report.to_csv(run.out / "summary.csv")
    report.to_markdown(run.out / "summary.md")
    return size, identical, report


def _inference_line(r: dict[str, float]) -> str:
    return (
        f"inference from the file, batch 1: dense {r['dense_us']:.0f} us, compressed "
        f"{r['compressed_us']:.0f} us; layer weights held: dense {r['dense_bytes']:.0f} B, "
        f"compressed {r['compressed_bytes']:.0f} B"
    )


def _table(run: _Run, result: dict[str, Any], report: CompressionReport) -> str:
    """The text the command line prints at the end of a run."""
    acc, size, dense = run.accuracy, result["file_bytes"], result["torch_save_dense_bytes"]
    lines = [
        f"Deep Compression of {run.config.model} on {run.splits.name} (seed {run.config.seed})",
        "",
        report.to_table(),
        "",
        f"test accuracy: dense {acc['dense']:.2f}% | pruned {acc['pruned']:.2f}% | shared "
        f"{acc['shared']:.2f}% -> fine-tuned {acc['final']:.2f}% | reloaded from file "
        f"{acc['reloaded']:.2f}% (outputs identical: {result['reloaded_outputs_identical']})",
        f"file {size} B vs torch.save of the dense fp32 state_dict {dense} B: "
        f"{dense / size:.1f}x smaller",
        _inference_line(result["inference"]),
        f"outputs in {run.out}/ ({result['total_seconds']} s)",
    ]
    return "\n".join(lines)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole Deep Compression pipeline and write its outputs to ``config.out``.

    Writes ``prune_sensitivity.{png,csv}``, ``bits_sensitivity.{png,csv}``,
    ``summary.{csv,md}`` (the compression report), ``model.tpsc`` (the compressed model)
    and ``results.json`` (settings and results).

    Args:
        config (DemoConfig): the settings.

    Returns:
        The results (also in ``results.json``), with the printable table under ``"table"``.

    Raises:
        FileNotFoundError: ``data="mnist"`` without ``data_dir``, or MNIST files missing.
        ValueError: an unknown ``data`` or ``model``.

    Example:
        >>> r = run_demo(DemoConfig(epochs=5, prune_epochs=2, share_epochs=1, out="o",
        ...                         progress=False))
        >>> list(r["accuracy"])
        ['dense', 'pruned', 'shared', 'final', 'reloaded']
        >>> r["accuracy"]["reloaded"] == r["accuracy"]["final"], r["ratio_vs_torch_save"] > 5
        (True, True)
        >>> print(r["table"].splitlines()[0])
        Deep Compression of lenet300 on digits (seed 0)
    """
    start = time.perf_counter()
    run = _prepare(config)
    epochs, prune_epochs, share_epochs = _defaults(config)
    model, p = run.model, config.progress
    with run.lap("train"):
        train_dense(model, run.train_loader, epochs=epochs, lr=config.lr, progress=p)
        run.accuracy["dense"] = evaluate(model, run.test_loader)[0]
        dense_torch_save = _dense_bytes(model)
    with run.lap("sensitivity scan"):
        sparsities = _choose_sparsities(run)
    with run.lap("pruning"):
        prune_agp(
            model, sparsities, run.train_loader, epochs=prune_epochs, lr=config.lr / 2, progress=p
        )
        run.accuracy["pruned"] = evaluate(model, run.test_loader)[0]
    with run.lap("bits scan"):
        bits = _choose_bits(run, sparsities)
    with run.lap("sharing"):
        run.accuracy["shared"], run.accuracy["final"] = share_and_finetune(
            model,
            bits,
            run.train_loader,
            run.test_loader,
            epochs=share_epochs,
            method=config.method,
            granularity=config.granularity,
            progress=p,
        )
    with run.lap("file"):
        size, identical, report = _write_file(run)
    with run.lap("inference"):
        inference = measure_inference(
            run.out / "model.tpsc",
            lambda: build_model(config.model, run.splits.image_size),
            next(iter(run.test_loader))[0],
        )
    result: dict[str, Any] = {
        "config": asdict(config),
        "sparsities": sparsities,
        "bits": bits,
        "accuracy": run.accuracy,
        "file_bytes": size,
        "torch_save_dense_bytes": dense_torch_save,
        "ratio_vs_torch_save": dense_torch_save / size,
        "ratio_vs_fp32_weights": report.totals()["dense"] / size,
        "reloaded_outputs_identical": identical,
        "inference": inference,
        "report": report.rows,
        "seconds": run.seconds,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(run.out / "results.json", json.dumps(result, indent=2, default=str))
    result["table"] = _table(run, result, report)
    return result
