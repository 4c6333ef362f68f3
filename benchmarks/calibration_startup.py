"""Start-up cost of the calibration's numba kernels in a new process (one thread).

Each row runs a fresh ``python`` that imports the kernels and calls each once on a tiny
input: "cold" with numba's on-disk cache removed first (a fresh install), "warm" with it
in place. The first numba call of a process also pays numba's own initialisation.

    PYTHONPATH=. python benchmarks/calibration_startup.py
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

CHILD = r"""
import time, numpy as np, torch
torch.set_num_threads(1)
from torchprune_share.calibration import kernels as k
out = []
w = np.ones((2, 8), np.float32); u = np.eye(8, dtype=np.float32)
t = time.perf_counter()
k.sweep_block(w, u, np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32),
              np.ones((2, 8), bool), np.zeros((2, 8), np.int64), np.zeros((2, 8), np.float32))
out.append(time.perf_counter() - t)
for name in ("normal_equations", "normal_equations_parallel"):
    t = time.perf_counter()
    getattr(k, name)(np.eye(8, dtype=np.float32), np.ones((2, 8), np.float32),
                     np.zeros((2, 8), np.int64), 4)
    out.append(time.perf_counter() - t)
print(" ".join(f"{v:.3f}" for v in out))
"""


def main() -> None:
    cache = pathlib.Path(__file__).resolve().parents[1] / "torchprune_share" / "calibration"
    print(
        "| cache | sweep_block (first numba call) s | normal_equations s | "
        "normal_equations_parallel s |"
    )
    print("|---|---|---|---|")
    for label in ("cold", "warm", "warm"):
        if label == "cold":
            for f in cache.glob("__pycache__/kernels.*.nb[ic]"):
                f.unlink()
        res = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
        )
        print(f"| {label} | " + " | ".join(res.stdout.split()) + " |")


if __name__ == "__main__":
    main()
