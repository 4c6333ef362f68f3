"""Level pruning of AlexNet's fc6 weight (9216 x 4096) against prune.l1_unstructured.

python benchmarks/level_prune.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune

from torchprune_share import level_prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amount", type=float, default=0.8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weight = torch.empty(4096, 9216)
    nn.init.kaiming_uniform_(weight)
    times: dict[str, list[float]] = {"torch": [], "ours": []}
    zeros = {}
    for _ in range(args.rounds):
        for kind in ("torch", "ours"):
            lin = nn.Linear(9216, 4096, bias=False)
            with torch.no_grad():
                lin.weight.copy_(weight)
            t = time.perf_counter()
            if kind == "torch":
                prune.l1_unstructured(lin, "weight", amount=args.amount)
            else:
                level_prune(lin, "weight", amount=args.amount)
            times[kind].append(time.perf_counter() - t)
            zeros[kind] = int((lin.weight == 0).sum())
    t_torch, t_ours = (statistics.median(times[k]) for k in ("torch", "ours"))
    print(
        f"9216x4096 weight, amount {args.amount}, {args.threads} threads, median of {args.rounds}"
    )
    print(f"{'method':<26} {'seconds':>8} {'zeros':>10}")
    print(f"{'prune.l1_unstructured':<26} {t_torch:>8.3f} {zeros['torch']:>10}")
    print(f"{'level_prune':<26} {t_ours:>8.3f} {zeros['ours']:>10}")
    print(f"speed-up: {t_torch / t_ours:.1f}x; same zero count: {zeros['torch'] == zeros['ours']}")


if __name__ == "__main__":
    main()
