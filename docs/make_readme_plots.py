"""Draw the README's sensitivity plots: LeNet-300-100 on scikit-learn's digits.

    python docs/make_readme_plots.py [--out docs] [--epochs 20]

Writes ``sensitivity.png`` (accuracy against per-layer sparsity) and ``bits.png``
(accuracy against per-layer sharing width) into ``--out``; takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from torchprune_share import bits_analysis, sensitivity
from torchprune_share.data import load_digits, make_loaders
from torchprune_share.models import LeNet300100
from torchprune_share.training import evaluate, train

logger = logging.getLogger("make_readme_plots")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    splits = load_digits(seed=args.seed)
    train_loader, val_loader, _ = make_loaders(splits, seed=args.seed)
    model = LeNet300100(splits.image_size)
    train(model, train_loader, epochs=args.epochs, lr=0.1, progress=False)
    accuracy, loss = evaluate(model, val_loader)
    logger.info("LeNet-300-100 on digits: validation accuracy %.2f%%, loss %.4f", accuracy, loss)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sparsities = [round(0.05 * i, 2) for i in range(20)]
    sens = sensitivity.perform_sensitivity_analysis(model, val_loader, sparsities, evaluate)
    sensitivity.sensitivities_to_png(
        sens, out / "sensitivity.png", title="LeNet-300-100 on digits: pruning sensitivity"
    )
    bits = bits_analysis.perform_bits_analysis(model, val_loader, range(1, 9), evaluate)
    bits_analysis.sensitivities_to_png(
        bits, out / "bits.png", title="LeNet-300-100 on digits: weight-sharing bits"
    )
    logger.info("wrote %s and %s", out / "sensitivity.png", out / "bits.png")


if __name__ == "__main__":
    main()
