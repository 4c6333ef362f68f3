"""Deep Compression's MNIST results (Han et al. 2016, Table 1) reproduced with the library.

Trains LeNet-300-100 and LeNet-5 (Caffe's: 20/50 conv channels, 500 hidden units) on real
MNIST, prunes them to the paper's per-layer densities with AGP while fine-tuning, shares
weights at the paper's bits, fine-tunes the codebooks, writes the compressed file and
measures the ratio from its real size. Then it tries what the paper did not (optimal
k-means, per-channel codebooks, fewer bits) on the same pruned model, and reports the best
ratio whose test error stays within 0.1 points of the uncompressed reference.

    python benchmarks/deep_compression_mnist.py --data-dir ../shared/data/mnist
    python benchmarks/deep_compression_mnist.py --data-dir ../shared/data/mnist --quick

Ratio = bytes of every tensor in fp32 (the paper's "original size") / bytes of the file.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from torchprune_share.demo import prune_agp, save_and_reload, share_and_finetune, train_dense
from torchprune_share.demo.data import Splits, load_mnist, make_loaders
from torchprune_share.demo.models import build_model
from torchprune_share.training import evaluate

# The paper's Table 2 (LeNet-300-100) and Table 3 (LeNet-5): density after pruning, bits.
PAPER = {
    "lenet300": {
        "density": {"fc1.weight": 0.08, "fc2.weight": 0.09, "fc3.weight": 0.26},
        "bits": {"fc1.weight": 6, "fc2.weight": 6, "fc3.weight": 6},
        "ratio": 40,
        "error": (1.64, 1.58),
    },
    "lenet5": {
        "density": {
            "conv1.weight": 0.66,
            "conv2.weight": 0.12,
            "fc1.weight": 0.08,
            "fc2.weight": 0.19,
        },
        "bits": {"conv1.weight": 8, "conv2.weight": 8, "fc1.weight": 5, "fc2.weight": 5},
        "ratio": 39,
        "error": (0.80, 0.74),
    },
}


@dataclass
class Variant:
    name: str
    bits: dict[str, int]
    method: str = "lloyd"
    granularity: str | dict[str, str] = "per_tensor"


def variants(model: str) -> list[Variant]:
    paper = PAPER[model]["bits"]
    one_fewer = {n: b - 1 for n, b in paper.items()}
    two_fewer = {n: max(2, b - 2) for n, b in paper.items()}
    out = [
        Variant("paper (linear init, Lloyd)", paper),
        Variant("optimal k-means", paper, method="optimal"),
        Variant("1 bit fewer", one_fewer),
        Variant("optimal, 2 bits fewer", two_fewer, method="optimal"),
    ]
    conv = {n: "per_channel" for n in paper if n.startswith("conv")}
    if conv:
        # Per-channel codebooks cost rows x 2**bits floats: worth trying on conv filters
        # only (on LeNet-300-100's fc layers they more than doubled the file in a first run).
        out.append(Variant("optimal, per-channel conv, 2 bits fewer", two_fewer, "optimal", conv))
    return out


def subset(splits: Splits, n: int) -> Splits:
    x, y = splits.train.tensors
    return Splits(
        TensorDataset(x[:n], y[:n]), splits.val, splits.test, splits.image_size, name=splits.name
    )


def fp32_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values())


def torch_save_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def run_model(name: str, splits: Splits, args: argparse.Namespace, out: Path) -> list[dict]:
    torch.manual_seed(args.seed)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=64, seed=args.seed)
    e_dense, e_prune, e_share = (
        (1, 1, 1) if args.quick else (args.epochs, args.epochs, args.share_epochs)
    )
    rows = []
    t0 = time.perf_counter()
    model = build_model(name, splits.image_size)
    train_dense(model, train_loader, epochs=e_dense, lr=0.05, progress=args.progress)
    ref_err = 100 - evaluate(model, test_loader)[0]
    ref_val_err = 100 - evaluate(model, val_loader)[0]
    dense_fp32, dense_save = fp32_bytes(model), torch_save_bytes(model)
    t_dense = time.perf_counter() - t0
    sparsities = {n: 1.0 - d for n, d in PAPER[name]["density"].items()}
    prune_agp(model, sparsities, train_loader, epochs=e_prune, lr=0.02, progress=args.progress)
    pruned_err = 100 - evaluate(model, test_loader)[0]
    t_pruned = time.perf_counter() - t0
    print(
        f"{name}: reference error {ref_err:.2f}% ({t_dense:.0f} s); pruned error {pruned_err:.2f}% ({t_pruned:.0f} s)",
        flush=True,
    )
    for v in variants(name)[: 1 if args.quick else None]:
        t1 = time.perf_counter()
        m = copy.deepcopy(model)
        share_and_finetune(
            m,
            v.bits,
            train_loader,
            test_loader,
            epochs=e_share,
            method=v.method,
            granularity=v.granularity,
            progress=args.progress,
        )
        path = out / f"{name}-{len(rows)}.tpsc"
        size, acc, identical = save_and_reload(
            m, lambda: build_model(name, splits.image_size), path, test_loader
        )
        err, val_err = 100 - acc, 100 - evaluate(m, val_loader)[0]
        row = {
            "model": name,
            "variant": v.name,
            "bits": v.bits,
            "density": PAPER[name]["density"],
            "ref_error": ref_err,
            "ref_val_error": ref_val_err,
            "error": err,
            "val_error": val_err,
            "file_bytes": size,
            "fp32_bytes": dense_fp32,
            "torch_save_bytes": dense_save,
            "ratio": dense_fp32 / size,
            "ratio_vs_torch_save": dense_save / size,
            "within_bound": err <= ref_err + 0.1 + 1e-9,
            "reload_identical": identical,
            "seconds": round(time.perf_counter() - t1, 1),
        }
        rows.append(row)
        print(
            f"  {v.name}: error {err:.2f}% (bound {ref_err + 0.1:.2f}), {size} B, {row['ratio']:.1f}x ({row['seconds']} s)",
            flush=True,
        )
    for r in rows:
        r["model_seconds"] = round(time.perf_counter() - t0, 1)
    return rows


def markdown(rows: list[dict], total_s: float, args: argparse.Namespace) -> str:
    head = "| model | variant | bits | ref. error | error | file (B) | ratio (fp32/file) | vs torch.save | within +0.1 |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        bits = "/".join(str(b) for b in r["bits"].values())
        lines.append(
            f"| {r['model']} | {r['variant']} | {bits} | {r['ref_error']:.2f}% | {r['error']:.2f}% | "
            f"{r['file_bytes']} | {r['ratio']:.1f}x | {r['ratio_vs_torch_save']:.1f}x | "
            f"{'yes' if r['within_bound'] else 'no'} |"
        )
    for name in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == name and r["within_bound"]]
        paper = PAPER[name]
        best = max(ok, key=lambda r: r["ratio"]) if ok else None
        lines.append("")
        lines.append(
            f"**{name}**: paper {paper['ratio']}x, error {paper['error'][0]} -> {paper['error'][1]}%; "
            + (
                f"best here within the bound: {best['ratio']:.1f}x ({best['variant']}), error "
                f"{best['ref_error']:.2f} -> {best['error']:.2f}%"
                if best
                else "no variant within the bound"
            )
        )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append("")
    lines.append(
        f"Run {when} on {platform.machine()} with {torch.get_num_threads()} torch threads "
        f"(torch {torch.__version__}), {total_s / 60:.1f} min in all"
        + (" (--quick: 1 epoch per stage on a subset; not the real result)" if args.quick else "")
        + f"; epochs: {args.epochs} dense, {args.epochs} pruning, {args.share_epochs} sharing; seed {args.seed}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder with the four MNIST IDX .gz files")
    ap.add_argument("--out", default="benchmarks/results", help="where the table and files go")
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"], choices=list(PAPER))
    ap.add_argument(
        "--epochs", type=int, default=12, help="epochs of dense training and of pruning"
    )
    ap.add_argument("--share-epochs", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest for these small models on a busy 2-core machine)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help="1 epoch per stage on 6000 images, paper variant only"
    )
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    splits = load_mnist(args.data_dir, seed=args.seed)
    if args.quick:
        splits = subset(splits, 6000)
    rows = []
    for name in args.models:
        rows += run_model(name, splits, args, out)
    table = markdown(rows, time.perf_counter() - start, args)
    (out / "mnist_table.md").write_text(table)
    (out / "mnist_results.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
