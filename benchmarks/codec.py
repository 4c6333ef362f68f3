"""Throughput of the numeric codec (bit packing and Huffman coding).

Run ``python benchmarks/codec.py [--n N] [--repeat R]``. Prints one table row per
case: stream length, alphabet, encode/decode seconds (best of ``R``), the payload
size in bits per symbol next to the empirical entropy, and fixed-width pack/unpack
times for the same stream at ``ceil(log2(alphabet))`` bits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from torchprune_share.codec import decode, encode, pack_bits, unpack_bits


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _zipf(rng: np.random.Generator, n: int, k: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** a
    return rng.choice(k, size=n, p=p / p.sum()).astype(np.int64)


def _cases(rng: np.random.Generator, n: int) -> list[tuple[str, np.ndarray]]:
    # Geometric gaps clipped to 32 values mimic relative-index streams of a pruned
    # layer; the 256-symbol Zipf stream mimics 8-bit k-means codebook indices.
    gaps = np.minimum(rng.geometric(0.25, n) - 1, 31).astype(np.int64)
    return [
        ("32 skewed (geometric)", gaps),
        ("32 zipf(1.3)", _zipf(rng, n, 32, 1.3)),
        ("256 zipf(1.1)", _zipf(rng, n, 256, 1.1)),
        ("256 uniform", rng.integers(0, 256, n)),
    ]


def _entropy_bits(x: np.ndarray) -> float:
    counts = np.bincount(x)
    p = counts[counts > 0] / x.size
    return float(-(p * np.log2(p)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="symbols per stream")
    parser.add_argument("--repeat", type=int, default=3, help="timings keep the best of R")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    header = (
        f"{'N':>10} {'alphabet':<22} {'enc s':>7} {'dec s':>7} {'enc+dec':>7} "
        f"{'bits/sym':>8} {'entropy':>8} {'bits':>4} {'pack s':>7} {'unpack s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, x in _cases(rng, args.n):
        t_enc, data = _best(lambda x=x: encode(x), args.repeat)
        t_dec, y = _best(lambda data=data: decode(data), args.repeat)
        if not np.array_equal(x, y):
            raise SystemExit(f"round trip failed for {name}")
        bits = max(1, int(x.max()).bit_length())
        t_pack, packed = _best(lambda x=x, bits=bits: pack_bits(x, bits), args.repeat)
        t_unpack, z = _best(
            lambda packed=packed, bits=bits, n=x.size: unpack_bits(packed, bits, n), args.repeat
        )
        if not np.array_equal(x, z):
            raise SystemExit(f"pack round trip failed for {name}")
        print(
            f"{x.size:>10} {name:<22} {t_enc:>7.3f} {t_dec:>7.3f} {t_enc + t_dec:>7.3f} "
            f"{8 * len(data) / x.size:>8.4f} {_entropy_bits(x):>8.4f} {bits:>4} "
            f"{t_pack:>7.3f} {t_unpack:>8.3f}"
        )


if __name__ == "__main__":
    main()
