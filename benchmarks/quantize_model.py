"""Weight sharing of an AlexNet-sized model (61M weights): ours against scikit-learn's KMeans.

The tensors have the shapes of AlexNet's 5 conv and 3 fc weights and Laplace-distributed
values; conv layers are shared at 8 bits, fc layers at 5 bits (Deep Compression's
choice), one codebook per tensor, linear init, Lloyd's algorithm for both.

    python benchmarks/quantize_model.py [--sklearn measure|extrapolate|skip] [--threads 1]

scikit-learn on fc6/fc7 (54M points) takes minutes; by default it is measured on every
other layer and extrapolated to fc6/fc7 from fc8's time per point at the same bits (said
so in the output). ``--sklearn measure`` runs it on every layer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from torchprune_share import register_weight_sharing

SHAPES = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
    "fc8": (1000, 4096),
}


def bits_of(name: str) -> int:
    return 8 if name.startswith("conv") else 5


class Holder(nn.Module):
    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(tensor)


def sklearn_time(x: np.ndarray, bits: int) -> float:
    k = 2**bits
    init = np.linspace(x.min(), x.max(), k, dtype=np.float64).reshape(-1, 1)
    t = time.perf_counter()
    KMeans(n_clusters=k, init=init, n_init=1, max_iter=300, tol=1e-4).fit(
        x.reshape(-1, 1).astype(np.float64)
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sklearn", choices=["measure", "extrapolate", "skip"], default="extrapolate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    laplace = torch.distributions.Laplace(0.0, 0.02)
    tensors = {}
    for name, shape in SHAPES.items():
        u = torch.rand(shape, generator=gen).clamp_(1e-7, 1 - 1e-7)
        tensors[name] = laplace.icdf(u)  # seeded Laplace samples
    total = sum(t.numel() for t in tensors.values())
    print(
        f"AlexNet-sized: {total / 1e6:.1f}M weights; conv 8 bits, fc 5 bits; {args.threads} thread(s)"
    )
    print(
        f"{'layer':<6} {'weights':>10} {'bits':>4} {'ours s':>8} {'sklearn s':>10} {'speed-up':>9}"
    )
    ours_total, sk_total, per_point = 0.0, 0.0, {}
    rows = []
    for name, t in tensors.items():
        holder = Holder(t)
        start = time.perf_counter()
        register_weight_sharing(holder, "weight", bits=bits_of(name))
        ours = time.perf_counter() - start
        assert holder.parametrizations.weight.original.numel() <= 2 ** bits_of(name)
        ours_total += ours
        rows.append((name, t, ours))
    # fc8 first: its time per point stands in for fc6/fc7 when extrapolating.
    order = sorted(rows, key=lambda r: (r[0] not in ("fc8",), list(SHAPES).index(r[0])))
    sk: dict[str, tuple[float, str]] = {}
    for name, t, _ in order:
        if args.sklearn == "skip":
            break
        b = bits_of(name)
        if args.sklearn == "extrapolate" and name in ("fc6", "fc7") and b in per_point:
            sk[name] = (per_point[b] * t.numel(), "extrapolated")
            continue
        secs = sklearn_time(t.numpy().ravel(), b)
        per_point.setdefault(b, secs / t.numel())
        sk[name] = (secs, "measured")
    for name, t, ours in rows:
        if name in sk:
            secs, how = sk[name]
            sk_total += secs
            mark = "*" if how == "extrapolated" else ""
            print(
                f"{name:<6} {t.numel():>10} {bits_of(name):>4} {ours:>8.2f} {secs:>9.1f}{mark:1} {secs / ours:>8.1f}x"
            )
        else:
            print(f"{name:<6} {t.numel():>10} {bits_of(name):>4} {ours:>8.2f} {'-':>10} {'-':>9}")
    line = f"{'total':<6} {total:>10} {'':>4} {ours_total:>8.2f}"
    if sk:
        line += f" {sk_total:>10.1f} {sk_total / ours_total:>8.1f}x"
    print(line)
    if any(how == "extrapolated" for _, how in sk.values()):
        print(
            "* scikit-learn extrapolated from fc8's time per point at 5 bits (not run on fc6/fc7)"
        )


if __name__ == "__main__":
    main()
