"""Benchmark of torchprune_share.kmeans.kmeans1d against scikit-learn and an exact solver.

For normal and Laplace "weights" of N values and k = 2**bits clusters it
times and scores (float64 SSE):

* ``lloyd``   -- kmeans1d(method="lloyd"), linear init;
* ``optimal`` -- kmeans1d(method="optimal");
* ``sklearn`` -- sklearn.cluster.KMeans(k, init=<same linear init>, n_init=1),
  scikit-learn's defaults otherwise (tol=1e-4, max_iter=300), one thread;
* ``exact``   -- the exact optimum, from the PyPI package ``kmeans1d``
  (an O(k n) solver; benchmark-only dependency) where installed and
  affordable, else from a small O(k n^2) DP on the small case only;
* ``np.sort`` and ``torch.sort`` of the same N, as yardsticks;
* weighted k-means (``sample_weight`` of lognormal importances) per channel
  (1536 rows x 384 values) and per tensor (1e6 values), k = 16, weighted and
  unweighted on the same data.

Other processes share this machine, so absolute times are noisy: every row
interleaves its measurements and reports ratios taken in the same run. One
thread everywhere (``torch.set_num_threads(1)``, threadpoolctl for sklearn).

Usage::

    python benchmarks/kmeans.py            # full run (several minutes)
    python benchmarks/kmeans.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from functools import partial

import numpy as np
import torch

from torchprune_share.kmeans import kmeans1d, sse

logger = logging.getLogger("benchmarks.kmeans")

try:  # benchmark-only dependency: never imported by the library or its tests
    import kmeans1d as exact_pkg
except ImportError:  # pragma: no cover - depends on the environment
    exact_pkg = None


def exact_dp(x: np.ndarray, k: int) -> float:
    """Exact minimum SSE by the textbook O(k n^2) dynamic programme (small n only)."""
    s = np.sort(x.astype(np.float64))
    n = len(s)
    c1 = np.concatenate([[0.0], np.cumsum(s)])
    c2 = np.concatenate([[0.0], np.cumsum(s * s)])
    i = np.arange(n + 1)
    # cost[i, j] of the segment s[i:j], i < j
    cnt = np.maximum(i[None, :] - i[:, None], 1)
    seg1 = c1[None, :] - c1[:, None]
    cost = c2[None, :] - c2[:, None] - seg1 * seg1 / cnt
    cost[i[None, :] <= i[:, None]] = np.inf
    cost[0, 0] = 0.0
    D = cost[0].copy()
    for _ in range(1, k):
        D = np.minimum(D, (D[:, None] + cost).min(axis=0))
    return float(D[n])


def exact_sse(x: np.ndarray, k: int) -> float | None:
    if exact_pkg is not None:
        res = exact_pkg.cluster(x.tolist(), k)
        c = torch.tensor(res.centroids, dtype=torch.float64)
        return sse(torch.from_numpy(x).double(), c, torch.tensor(res.clusters))
    if len(x) <= 3000:
        return exact_dp(x, k)
    return None


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def make_data(dist: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dist == "normal":
        return (rng.standard_normal(n) * 0.05).astype(np.float32)
    return (rng.laplace(size=n) * 0.03).astype(np.float32)


def run_sklearn(xn: np.ndarray, k: int):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    init = np.linspace(xn.min(), xn.max(), k, dtype=np.float32)[:, None]
    with threadpool_limits(1):
        km = KMeans(k, init=init, n_init=1, algorithm="lloyd").fit(xn[:, None])
    return torch.from_numpy(km.cluster_centers_[:, 0]), torch.from_numpy(km.labels_).long()


def bench_1d(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        for dist in ("normal", "laplace"):
            xn = make_data(dist, n, seed=n % 997 + (dist == "laplace"))
            x = torch.from_numpy(xn)
            for bits in args.bits:
                k = 2**bits
                t = {"np.sort": [], "torch.sort": [], "lloyd": [], "optimal": []}
                res = {}
                # Interleave the cheap measurements; keep the median.
                for _ in range(args.repeat):
                    t["np.sort"].append(timed(partial(np.sort, xn))[1])
                    t["torch.sort"].append(timed(partial(torch.sort, x))[1])
                    res["lloyd"], dt = timed(partial(kmeans1d, x, k))
                    t["lloyd"].append(dt)
                    res["optimal"], dt = timed(partial(kmeans1d, x, k, method="optimal"))
                    t["optimal"].append(dt)
                row = {"dist": dist, "N": n, "bits": bits}
                row.update({f"t_{key}": statistics.median(v) for key, v in t.items()})
                row["sse_lloyd"] = sse(x, *res["lloyd"])
                row["sse_optimal"] = sse(x, *res["optimal"])
                if n >= args.sklearn_skip_n and bits >= args.sklearn_skip_bits:
                    row["t_sklearn"] = row["sse_sklearn"] = None
                    row["note"] = "sklearn skipped: minutes"
                else:
                    (c, lab), row["t_sklearn"] = timed(partial(run_sklearn, xn, k))
                    row["sse_sklearn"] = sse(x, c, lab)
                row["sse_exact"] = None
                if n <= args.exact_max_n:
                    row["sse_exact"], row["t_exact"] = timed(partial(exact_sse, xn, k))
                rows.append(row)
                print_row(row, flush=True)
    return rows


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


HEADER = (
    f"{'dist':8s} {'N':>6s} {'b':>2s} | {'np.sort':>8s} {'torch.s':>8s} {'lloyd':>8s} "
    f"{'optimal':>8s} {'sklearn':>8s} | {'l/sk t':>7s} {'l/sk sse':>8s} {'l/npsort':>8s} "
    f"{'o/tsort':>7s} {'o/exact':>8s} {'l/o sse':>8s} {'sk/o sse':>8s}"
)


def print_row(r: dict, flush: bool = False) -> None:
    if not getattr(print_row, "done_header", False):
        print(HEADER)
        print("-" * len(HEADER))
        print_row.done_header = True
    line = (
        f"{r['dist']:8s} {r['N']:6.0e} {r['bits']:2d} | "
        f"{r['t_np.sort']:8.3f} {r['t_torch.sort']:8.3f} {r['t_lloyd']:8.3f} "
        f"{r['t_optimal']:8.3f} {fmt(r['t_sklearn'], '8.2f')} | "
        f"{fmt(ratio(r['t_lloyd'], r['t_sklearn']), '7.4f')} "
        f"{fmt(ratio(r['sse_lloyd'], r['sse_sklearn']), '8.4f')} "
        f"{r['t_lloyd'] / r['t_np.sort']:8.2f} "
        f"{r['t_optimal'] / r['t_torch.sort']:7.2f} "
        f"{fmt(ratio(r['sse_optimal'], r['sse_exact']), '8.5f')} "
        f"{r['sse_lloyd'] / r['sse_optimal']:8.4f} "
        f"{fmt(ratio(r['sse_sklearn'], r['sse_optimal']), '8.4f')}"
    )
    if r.get("note"):
        line += f"  ({r['note']})"
    print(line, flush=flush)


def bench_2d(args) -> None:
    B, n, k = args.rows_2d, 9216, 32
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.standard_normal((B, n)) * 0.05).astype(np.float32))
    print(f"\n2-D batched input: {B} rows x {n} values, k={k} (per-row codebooks)")
    t_sort = timed(lambda: np.sort(x.numpy(), axis=1))[1]
    print(f"  np.sort(axis=1)          {t_sort:7.2f} s")
    sses = {}
    for method in ("lloyd", "optimal"):
        (c, lab), dt = timed(partial(kmeans1d, x, k, method=method))
        sses[method] = sse(x, c, lab)
        print(f"  {method:8s}                 {dt:7.2f} s   SSE {sses[method]:.6g}")
    if exact_pkg is not None:
        rows = min(B, args.exact_rows_2d)
        ex = sum(exact_sse(x[r].numpy(), k) for r in range(rows))
        c, lab = kmeans1d(x[:rows], k, method="optimal")
        c2, lab2 = kmeans1d(x[:rows], k)
        print(
            f"  first {rows} rows: optimal/exact SSE {sse(x[:rows], c, lab) / ex:.5f}, "
            f"lloyd/exact SSE {sse(x[:rows], c2, lab2) / ex:.5f}"
        )


def importance_weights(rng: np.random.Generator, shape) -> np.ndarray:
    """Hessian-diagonal-like importances: lognormal over orders of magnitude, 20 % zeros."""
    return (rng.lognormal(0.0, 2.0, shape) * (rng.random(shape) >= 0.2)).astype(np.float32)


def bench_weighted(args) -> None:
    """Weighted k-means as calibrated quantization uses it, against the same data unweighted."""
    rng = np.random.default_rng(1)
    B, n, k = args.rows_weighted, 384, 16
    cases = [
        (f"per-channel {B} x {n}", (B, n)),
        (f"per-tensor {args.n_weighted:.0e}", (args.n_weighted,)),
    ]
    print(f"\nweighted k-means, k={k} (lognormal importances, 20 % zero), one thread")
    for name, shape in cases:
        x = torch.from_numpy((rng.standard_normal(shape) * 0.02).astype(np.float32))
        w = torch.from_numpy(importance_weights(rng, shape))
        for method in ("lloyd", "optimal"):
            (cu, lu), t_u = timed(partial(kmeans1d, x, k, method=method))
            (cw, lw), t_w = timed(partial(kmeans1d, x, k, method=method, sample_weight=w))
            gain = sse(x, cu, lu, w) / sse(x, cw, lw, w)
            print(
                f"  {name:24s} {method:8s} unweighted {t_u:6.2f} s   weighted {t_w:6.2f} s   "
                f"weighted SSE: unweighted codebook / weighted codebook {gain:6.3f}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--sizes", type=float, nargs="*", default=None, help="values of N")
    p.add_argument("--bits", type=int, nargs="*", default=None, help="bit widths")
    p.add_argument("--repeat", type=int, default=None, help="interleaved repeats (median)")
    p.add_argument(
        "--exact-max-n", type=float, default=None, help="largest N with an exact solution"
    )
    p.add_argument("--sklearn-all", action="store_true", help="also run sklearn at N=1e7, 8 bits")
    p.add_argument("--rows-2d", type=int, default=None, help="rows of the 2-D case (0: skip)")
    p.add_argument(
        "--rows-weighted", type=int, default=None, help="rows of the weighted case (0: skip)"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    quick = args.quick
    args.sizes = [int(s) for s in (args.sizes or ([2000, 100_000] if quick else [1e5, 1e6, 1e7]))]
    args.bits = args.bits or ([2, 8] if quick else [2, 4, 5, 8])
    args.repeat = args.repeat or (1 if quick else 3)
    args.exact_max_n = int(args.exact_max_n or (1e5 if quick else 1e6))
    args.sklearn_skip_n = 10**7 if not args.sklearn_all else 10**12
    args.sklearn_skip_bits = 8
    args.rows_2d = args.rows_2d if args.rows_2d is not None else (64 if quick else 4096)
    args.exact_rows_2d = 8 if quick else 64
    if args.rows_weighted is None:
        args.rows_weighted = 64 if quick else 1536
    args.n_weighted = 20_000 if quick else 1_000_000
    if exact_pkg is None:
        print("note: PyPI package kmeans1d not installed: exact SSE only where N <= 3000")
    print(
        "times in seconds (median of interleaved repeats); ratios from the same run;\n"
        "sklearn: KMeans(k, init=<same linear init>, n_init=1), defaults otherwise, 1 thread\n"
        "columns: l/sk = lloyd/sklearn, l/npsort = lloyd time / np.sort time,\n"
        "o/tsort = optimal time / torch.sort time, o/exact = optimal SSE / exact optimum\n"
    )
    import sklearn.cluster  # noqa: F401 - import once, outside the timings

    bench_1d(args)
    if args.rows_2d:
        bench_2d(args)
    if args.rows_weighted:
        bench_weighted(args)


if __name__ == "__main__":
    main()
