"""Sensitivity-scan overhead: scan time against points x one validation pass.

    python benchmarks/sensitivity.py [--data ../shared/data/mnist] [--n-val 5000] [--threads 1]

LeNet-300-100 on MNIST-sized inputs (real MNIST validation images when ``--data`` holds
them, random ones otherwise). Prints, for a pruning scan (9 sparsities) and a bits scan
(6, 4, 2 bits) over the three weights, the ratio

    scan time / (points x one validation pass)

against the issue's budget (<= 1.1 plus clustering time on the same scale), and the ratio
with the time spent computing masks and clusters taken out, over the points alone and over
the points plus the baseline pass every scan makes. Each round times a block of validation passes and
then a scan, and the ratio is taken within the round (timings on a shared machine drift by
2x); the medians over rounds are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from torchprune_share import bits_analysis, sensitivity
from torchprune_share.data import MNIST_FILES, load_mnist
from torchprune_share.models import LeNet300100
from torchprune_share.training import evaluate


def _val_loader(data: Path, n_val: int, batch: int) -> tuple[DataLoader, str]:
    if all((data / f).is_file() for f in MNIST_FILES.values()):
        splits = load_mnist(data, n_val=n_val)
        return DataLoader(splits.val, batch_size=batch), f"MNIST validation ({n_val} images)"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_val, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n_val,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch), f"random 28x28 ({n_val} images)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", default=str(root.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--n-val", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=8, help="validation passes timed per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loader, what = _val_loader(Path(args.data), args.n_val, args.batch)
    model = LeNet300100(28)
    evaluate(model, loader)  # warm-up

    def one_pass() -> float:
        t = time.perf_counter()
        evaluate(model, loader)
        return time.perf_counter() - t

    sparsities = [round(0.1 * i, 1) for i in range(1, 10)]
    scans = {
        "pruning (9 sparsities)": lambda: sensitivity.perform_sensitivity_analysis(
            model, loader, sparsities, evaluate, progress=False
        ),
        "bits (6, 4, 2)": lambda: bits_analysis.perform_bits_analysis(
            model, loader, [6, 4, 2], evaluate, progress=False
        ),
    }
    print(f"LeNet-300-100, {what}, {args.threads} thread(s), median of {args.rounds} rounds")
    cols = ("points", "pass s", "scan s", "clusters s", "ratio", "budget", "-clusters", "+baseline")
    print(f"{'scan':<24}" + "".join(f"{c:>11}" for c in cols))
    for label, run in scans.items():
        rows = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(args.block):
                evaluate(model, loader)
            t_pass = (time.perf_counter() - t) / args.block
            t = time.perf_counter()
            result = run()
            t_scan = time.perf_counter() - t
            t_clusters = result.timings["transform"]
            points = sum(len(levels) for levels in result.values())
            rows.append(
                (
                    t_pass,
                    t_scan,
                    t_clusters,
                    t_scan / (points * t_pass),
                    (1.1 * points * t_pass + t_clusters) / (points * t_pass),
                    (t_scan - t_clusters) / (points * t_pass),
                    (t_scan - t_clusters) / ((points + 1) * t_pass),
                )
            )
        med = [statistics.median(c) for c in zip(*rows)]
        cells = [
            f"{points:>11}",
            *(f"{v:>11.4f}" for v in med[:3]),
            *(f"{v:>11.3f}" for v in med[3:]),
        ]
        print(f"{label:<24}" + "".join(cells))
    print(
        "ratio = scan time / (points x one validation pass); budget = the issue's bound "
        "(1.1 + clusters) on that scale;\n-clusters = ratio without the masks/clusters time; "
        "+baseline = the same over points + 1 passes (a scan also evaluates the unchanged model)"
    )


if __name__ == "__main__":
    main()
