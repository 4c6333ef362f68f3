"""How the calibrated ``"hessian"`` k-means should weigh input column j.

The sweep's k-means weighs every entry of column j by one number. An error there costs
``H_jj`` when nothing compensates it and ``1 / [H⁻¹]_jj`` when every other column does;
the GPTQ sweep (act order) gives column j exactly ``1 / U_jj²`` (``U`` the factor of
``H⁻¹`` in sweep order). The default is the geometric mean of the two bounds. This script
swaps the weighting (a patch of ``calibration.matrix._entry_weights``, benchmark only)
and measures the whole default calibrated sharing with each, in the same run: MiniLM-L3
and its 6-layer stand-in (cosine), the small GPT (mean gap closed over ``--seeds``).

    python benchmarks/post_training_weights.py [--seeds 20] [--models minilm-l3,minilm-l3x2,gpt-pydoc]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
import pt_models

import torchprune_share.calibration.matrix as matrix
from torchprune_share.calibration.hessian import inverse_cholesky

DEFAULT = matrix._entry_weights


def _bounds(stats: matrix.Statistics, damping: float) -> tuple[Tensor, Tensor, Tensor]:
    h = stats.hessian.to(torch.float32)
    d = torch.diagonal(h).clamp(min=0)
    damped = d + damping * float(d.mean()) + 1e-12
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    u, _, _ = inverse_cholesky(h[order][:, order], damping)
    inverse = torch.argsort(order)
    return damped, u.square().sum(0)[inverse], torch.diagonal(u).square()[inverse]


def weighting(name: str):
    if name == "sqrt(H_jj / [H^-1]_jj) (default)":
        return DEFAULT

    def weights(w: Tensor, stats: matrix.Statistics, damping: float, inverse_diagonal=None):
        if stats.importance is not None or stats.hessian is None or inverse_diagonal is None:
            return DEFAULT(w, stats, damping, None)
        damped, inv_diag, u_diag = _bounds(stats, damping)
        v = {"H_jj": damped, "1 / [H^-1]_jj": 1 / inv_diag, "1 / U_jj^2": 1 / u_diag}[name]
        return v.unsqueeze(0).expand_as(w)

    return weights


NAMES = ["H_jj", "1 / [H^-1]_jj", "sqrt(H_jj / [H^-1]_jj) (default)", "1 / U_jj^2"]


def run(name: str, case: pt_models.Case, seeds: int) -> None:
    dense = case.quality(case.model)
    n = seeds if name == "gpt-pydoc" else 1
    print(f"\n## {name}: dense {case.metric} {abs(dense):.4f}, {n} augment seed(s)\n")
    print("| setting | data-free | weights | calibrated | gap closed (mean) | sd | time per call |")
    print("|---|---|---|---|---|---|---|")
    for bits in (4, 3):
        free = pt_models.data_free_quality(case, bits)
        for w in NAMES:
            matrix._entry_weights = weighting(w)
            try:
                qs, secs = pt_models.calibrated_over_seeds(case, bits, n)
            finally:
                matrix._entry_weights = DEFAULT
            print(pt_models.closure_row(bits, free, dense, w, qs, secs, 5), flush=True)


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
    for name in args.models.split(","):
        case = pt_models.SHARING_CASES[name]()
        if case is None:
            print(f"\n## {name}: skipped (data or package absent)")
            continue
        run(name, case, args.seeds)


if __name__ == "__main__":
    main()
