"""How much the calibrated results move with the synthetic sequences' seed (``augment_seed``).

``hessian`` calibrates by default on the real batches plus synthetic token sequences
drawn with ``augment_seed``; one run of :mod:`post_training` is one draw. On a model
whose data-free gap is small (the GPT's 4-bit gap is 0.04 perplexity) one draw cannot
decide a "closes 75 % of the gap" criterion: this script repeats the default calibrated
compression over several seeds and prints each draw's closure, their mean and range.

    python benchmarks/post_training_seeds.py [--models gpt-pydoc,minilm-l3] [--seeds 5]
        [--settings 4-bit/ch,3-bit/ch]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import pt_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt-pydoc,minilm-l3")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--settings", default="4-bit/ch,3-bit/ch")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} torch {torch.__version__}, "
        f"{args.threads} thread(s), augment_seed 0..{args.seeds - 1}"
    )
    for name in args.models.split(","):
        case = pt_models.SHARING_CASES[name]()
        if case is None:
            print(f"\n## {name}: skipped (data or package absent)")
            continue
        dense = case.quality(case.model)
        print(f"\n## {name}: dense {case.metric} {abs(dense):.4f}\n")
        print("| setting | data-free | hessian per seed | closed per seed | mean closed | range |")
        print("|---|---|---|---|---|---|")
        for setting in args.settings.split(","):
            bits = int(setting[0])
            free = pt_models.data_free_quality(case, bits)
            qs, _ = pt_models.calibrated_over_seeds(case, bits, args.seeds)
            closed = [(q - free) / (dense - free) for q in qs]
            shown = " / ".join(f"{abs(q):.4f}" for q in qs)
            pct = " / ".join(f"{100 * c:.0f}" for c in closed)
            print(
                f"| {setting} | {abs(free):.4f} | {shown} | {pct} % | "
                f"{100 * statistics.mean(closed):.1f} % | "
                f"{100 * min(closed):.0f}–{100 * max(closed):.0f} % |",
                flush=True,
            )


if __name__ == "__main__":
    main()
