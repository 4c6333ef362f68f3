"""Training-step cost of a pruned + shared Linear(4096, 4096) against torch's pruning hook.

Every variant is timed once per round, rounds interleaved, and the median reported, so
the ratios compare like with like even on a busy machine. Plain script:

    python benchmarks/train_step.py [--threads 2] [--rounds 15] [--size 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import bake, level_prune, register_weight_sharing


def build(size: int, kind: str) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(size, size)
    if kind == "torch_hook":
        prune.l1_unstructured(lin, "weight", amount=0.8)
    elif kind.startswith("ours") or kind == "baked":
        level_prune(lin, "weight", amount=0.8)
        register_weight_sharing(lin, "weight", bits=5, cache_index=kind != "ours_nocache")
        if kind == "baked":
            bake(lin)
    return lin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.size)

    step_kinds = ["plain", "torch_hook", "ours", "ours_nocache"]
    mods = {k: build(args.size, k) for k in step_kinds}
    fwd = {"plain": mods["plain"], "ours_cached": mods["ours"], "baked": build(args.size, "baked")}

    def step(m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        m(x).sum().backward()

    def forward(name: str) -> None:
        with torch.no_grad():
            fwd[name](x)

    for m in mods.values():  # warm-up (also builds the gather caches)
        step(m)
    times: dict[str, list[float]] = {k: [] for k in [*step_kinds, *(f"fwd_{k}" for k in fwd)]}
    for _ in range(args.rounds):
        for k, m in mods.items():
            t = time.perf_counter()
            step(m)
            times[k].append(time.perf_counter() - t)
    # Inference: one parametrize.cached() context around many forwards, as a serving loop
    # would hold it; only the shared module is parametrized, so the others are unaffected.
    with parametrize.cached():
        for k in fwd:
            forward(k)
        for _ in range(args.rounds):
            for k in fwd:
                t = time.perf_counter()
                forward(k)
                times[f"fwd_{k}"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"Linear({args.size}, {args.size}), batch {args.batch}, {args.threads} threads, "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(f"{'variant':<34} {'ms':>8} {'/ plain':>8} {'/ torch hook':>13}")
    labels = {
        "plain": "plain, forward+backward",
        "torch_hook": "torch prune hook 80%, fwd+bwd",
        "ours": "ours 80% + 5 bits, fwd+bwd",
        "ours_nocache": "ours, cache_index=False, fwd+bwd",
    }
    for k in step_kinds:
        print(
            f"{labels[k]:<34} {med[k]:>8.1f} {med[k] / med['plain']:>8.2f} "
            f"{med[k] / med['torch_hook']:>13.2f}"
        )
    for k, label in (
        ("fwd_plain", "plain, forward only"),
        ("fwd_ours_cached", "ours in parametrize.cached(), fwd"),
        ("fwd_baked", "ours baked, forward only"),
    ):
        print(f"{label:<34} {med[k]:>8.2f} {med[k] / med['fwd_plain']:>8.2f} {'':>13}")


if __name__ == "__main__":
    main()
