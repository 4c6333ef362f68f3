"""Which k-means init the calibrated sharing should start from: ``"linear"``, ``"dp"``, ``"optimal"``.

Calibrated sharing (``Quantizer.quantize(model, calibration=...)``) starts every codebook
from a k-means of the weights weighted per input column, then assigns codes in the GPTQ-style
sweep and refits the centroids. The start matters: Lloyd from the linear init stalls in
local minima of the weighted problem. This script measures, in the same run:

1. the k-means alone, on the weighted rows the calibrated 6-layer BERT stand-in clusters
   (captured from one calibrated run): weighted SSE and time of Lloyd from ``"linear"``,
   Lloyd from the coarse DP seed ``"dp"``, and ``method="optimal"``;
2. the whole calibrated sharing with each: MiniLM-L3 and its 6-layer stand-in (cosine to
   the dense embeddings on held-out sentences), and the small GPT (perplexity; the mean
   gap closed over ``--seeds`` augment seeds, as one draw is noise there).

    python benchmarks/post_training_init.py [--seeds 20] [--models minilm-l3,minilm-l3x2,gpt-pydoc]
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import pt_models

import torchprune_share.calibration.matrix as matrix
from torchprune_share import Quantizer, kmeans

VARIANTS = {
    "linear": {"init": "linear"},
    "dp (auto)": {"init": "dp"},
    "optimal": {"init": "linear", "method": "optimal"},
}


def capture_rows(case: pt_models.Case, bits: int) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """The (rows, k, weights) of every k-means of one calibrated sharing of ``case``."""
    seen: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    original = matrix.kmeans.kmeans1d

    def record(x: torch.Tensor, k: int, **kw: object) -> object:
        seen.append((x.clone(), k, kw["sample_weight"].clone()))  # type: ignore[union-attr]
        return original(x, k, **kw)

    matrix.kmeans.kmeans1d = record  # type: ignore[assignment]
    try:
        m = copy.deepcopy(case.model)
        Quantizer({t: bits for t in case.targets}, granularity="per_channel").quantize(
            m, calibration=case.calibration, forward=case.forward, progress=False
        )
    finally:
        matrix.kmeans.kmeans1d = original  # type: ignore[assignment]
    return seen


def kmeans_table(case: pt_models.Case) -> None:
    print("\n## k-means alone: the weighted rows of the calibrated 6-layer stand-in\n")
    print("| bits | rows | variant | weighted SSE | vs optimal | time (best of 3) |")
    print("|---|---|---|---|---|---|")
    for bits in (4, 3):
        rows = capture_rows(case, bits)
        n_rows = sum(x.shape[0] for x, _, _ in rows)
        results = {}
        for name, kw in VARIANTS.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                total = 0.0
                for x, k, w in rows:
                    c, labels = kmeans.kmeans1d(
                        x, k, sample_weight=w, max_iter=matrix.INIT_ITERS, **kw
                    )
                    total += kmeans.sse(x, c, labels, w) / float(w.sum())
                best = min(best, time.perf_counter() - t0)
            results[name] = (total, best)
        ref = results["optimal"][0]
        for name, (total, secs) in results.items():
            print(
                f"| {bits} | {n_rows} | {name} | {total:.6g} | {100 * (total / ref - 1):+.2f} % | "
                f"{secs:.2f} s |",
                flush=True,
            )


def sharing_table(name: str, case: pt_models.Case, seeds: int) -> None:
    dense = case.quality(case.model)
    n = seeds if name == "gpt-pydoc" else 1
    print(f"\n## {name}: dense {case.metric} {abs(dense):.4f}, {n} augment seed(s)\n")
    print("| setting | data-free | variant | calibrated | gap closed (mean) | sd | time per call |")
    print("|---|---|---|---|---|---|---|")
    for bits in (4, 3):
        free = pt_models.data_free_quality(case, bits)
        for variant, kw in VARIANTS.items():
            qs, secs = pt_models.calibrated_over_seeds(case, bits, n, **kw)
            print(pt_models.closure_row(bits, free, dense, variant, qs, secs, 4), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm-l3,minilm-l3x2,gpt-pydoc")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} torch {torch.__version__}, "
        "1 thread"
    )
    names = args.models.split(",")
    cases = {}
    for name in names:
        cases[name] = pt_models.SHARING_CASES[name]()
        if cases[name] is None:
            print(f"\n## {name}: skipped (data or package absent)")
    if cases.get("minilm-l3x2") is not None:
        kmeans_table(cases["minilm-l3x2"])
    for name in names:
        if cases[name] is not None:
            sharing_table(name, cases[name], args.seeds)


if __name__ == "__main__":
    main()
