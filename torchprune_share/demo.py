"""The end-to-end Deep Compression pipeline behind ``torchprune-share demo``.

train -> pruning sensitivity scan -> per-layer sparsities -> AGP pruning with fine-tuning
-> bits scan -> weight sharing with per-layer bits -> codebook fine-tuning -> compressed
file -> reload into a fresh model and re-evaluate.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bits_analysis import perform_bits_analysis
from .data import Splits, load_digits, load_mnist, make_loaders
from .fileformat import compression_report, load_compressed, save_compressed
from .models import build_model
from .policies import LevelPruner, Quantizer, recommend_bits, recommend_sparsities
from .schedules import AGPSchedule
from .sensitivity import perform_sensitivity_analysis
from .training import evaluate, train

__all__ = ["DemoConfig", "run_demo"]

logger = logging.getLogger(__name__)

SCAN_SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97]
SCAN_BITS = [8, 7, 6, 5, 4, 3, 2]


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the command line's ``demo`` options).

    ``sparsities`` / ``bits`` (``{tensor: value}``) fix the per-layer choices instead of
    deriving them from the scans; ``epochs`` etc. default per data set.
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


def _sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


def _dense_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def _train_cosine(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    progress: bool,
    desc: str,
    after_step: Any = None,
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
        The :class:`LevelPruner` used.
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


def save_and_reload(
    model: nn.Module, build: Any, path: str | Path, test_loader: Any
) -> tuple[int, float, bool]:
    """Save ``model`` compressed, load the file into ``build()``, and compare.

    Args:
        model (nn.Module): the compressed model.
        build (callable): returns a freshly built model of the same architecture.
        path (str or Path): the file to write.
        test_loader: batches to evaluate the reloaded model on.

    Returns:
        ``(file bytes, reloaded test accuracy, whether outputs are bitwise identical)``.
    """
    size = save_compressed(model, path)
    fresh = load_compressed(build(), path)
    acc = evaluate(fresh, test_loader)[0]
    model.eval()
    fresh.eval()
    with torch.no_grad():
        identical = all(torch.equal(model(x), fresh(x)) for x, _ in test_loader)
    return size, acc, identical


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


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole Deep Compression pipeline and write its outputs to ``config.out``.

    Writes ``prune_sensitivity.{png,csv}``, ``bits_sensitivity.{png,csv}``,
    ``summary.{csv,md}`` (the compression report), ``model.tpsc`` (the compressed model)
    and ``results.json`` (settings and results).

    Args:
        config (DemoConfig): the settings.

    Returns:
        The results (also in ``results.json``), with the printable table under ``"table"``.

    Example:
        >>> r = run_demo(DemoConfig(progress=False, out="/tmp/tps-demo"))  # doctest: +SKIP
        >>> r["ratio_vs_torch_save"] > 20  # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    # Small models run fastest on one thread; two-thread OpenMP regions can stall for
    # milliseconds when the machine is busy.
    threads = config.threads or (1 if config.data == "digits" else None)
    if threads:
        torch.set_num_threads(threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    splits = _load(config)
    train_loader, val_loader, test_loader = make_loaders(
        splits, batch_size=config.batch_size, seed=config.seed
    )
    model = build_model(config.model, splits.image_size)
    epochs, prune_epochs, share_epochs = _defaults(config)
    p = config.progress
    timings: dict[str, float] = {}

    def lap(stage: str, t0: float) -> None:
        timings[stage] = round(time.perf_counter() - t0, 2)
        logger.info("%s: %.1f s", stage, timings[stage])

    # 1. dense training
    t0 = time.perf_counter()
    train_dense(model, train_loader, epochs=epochs, lr=config.lr, progress=p)
    acc = {"dense": evaluate(model, test_loader)[0]}
    dense_torch_save = _dense_bytes(model)
    lap("train", t0)

    # 2. pruning sensitivity -> per-layer sparsities
    t0 = time.perf_counter()
    sens = perform_sensitivity_analysis(
        model, val_loader, SCAN_SPARSITIES, evaluate, nn.CrossEntropyLoss(), progress=p
    )
    sens.to_png(out / "prune_sensitivity.png")
    sens.to_csv(out / "prune_sensitivity.csv")
    if config.sparsities is not None:
        sparsities = dict(config.sparsities)
    else:
        sparsities = {
            n: min(s, config.max_sparsity)
            for n, s in recommend_sparsities(sens, max_drop=config.max_drop)
        }
    lap("sensitivity scan", t0)

    # 3. AGP pruning while fine-tuning
    t0 = time.perf_counter()
    prune_agp(model, sparsities, train_loader, epochs=prune_epochs, lr=config.lr / 2, progress=p)
    acc["pruned"] = evaluate(model, test_loader)[0]
    lap("pruning", t0)

    # 4. bits scan -> per-layer bits
    t0 = time.perf_counter()
    bits_scan = perform_bits_analysis(
        model,
        val_loader,
        SCAN_BITS,
        evaluate,
        nn.CrossEntropyLoss(),
        method=config.method,
        granularity=config.granularity,
        progress=p,
    )
    bits_scan.to_png(out / "bits_sensitivity.png")
    bits_scan.to_csv(out / "bits_sensitivity.csv")
    if config.bits is not None:
        bits = dict(config.bits)
    else:
        chosen = dict(recommend_bits(bits_scan, max_drop=config.max_drop))
        bits = {n: max(chosen.get(n, max(SCAN_BITS)), config.min_bits) for n in sparsities}
    lap("bits scan", t0)

    # 5. weight sharing and codebook fine-tuning
    t0 = time.perf_counter()
    acc["shared"], acc["final"] = share_and_finetune(
        model,
        bits,
        train_loader,
        test_loader,
        epochs=share_epochs,
        method=config.method,
        granularity=config.granularity,
        progress=p,
    )
    lap("sharing", t0)

    # 6. the compressed file, reloaded into a fresh model
    t0 = time.perf_counter()
    path = out / "model.tpsc"
    size, acc["reloaded"], identical = save_and_reload(
        model, lambda: build_model(config.model, splits.image_size), path, test_loader
    )
    report = compression_report(path)
    report.to_csv(out / "summary.csv")
    report.to_markdown(out / "summary.md")
    lap("file", t0)

    result: dict[str, Any] = {
        "config": asdict(config),
        "sparsities": sparsities,
        "bits": bits,
        "accuracy": acc,
        "file_bytes": size,
        "torch_save_dense_bytes": dense_torch_save,
        "ratio_vs_torch_save": dense_torch_save / size,
        "ratio_vs_fp32_weights": report.totals()["dense"] / size,
        "reloaded_outputs_identical": identical,
        "report": report.rows,
        "seconds": timings,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        f"Deep Compression of {config.model} on {splits.name} (seed {config.seed})",
        "",
        report.to_table(),
        "",
        f"test accuracy: dense {acc['dense']:.2f}% | pruned {acc['pruned']:.2f}% | shared "
        f"{acc['shared']:.2f}% -> fine-tuned {acc['final']:.2f}% | reloaded from file "
        f"{acc['reloaded']:.2f}% (outputs identical: {identical})",
        f"file {size} B vs torch.save of the dense fp32 state_dict {dense_torch_save} B: "
        f"{dense_torch_save / size:.1f}x smaller",
        f"outputs in {out}/ ({result['total_seconds']} s)",
    ]
    result["table"] = "\n".join(lines)
    return result
