"""Compressed inference on CPU: dense, torch CSR and this package's kernels, in one run.

Part 1, one layer: a ``size x size`` fp32 weight at several sparsities and code widths
(random kept positions, uniform random codes, a random codebook: timing does not depend
on the values), batch sizes 1 / 8 / 64, at 1 and 2 threads. Every backend is timed once
per round, rounds interleaved, the median kept, so the ratios compare like with like on
a busy machine. Bytes held: dense weight; torch CSR (values + int64 indices); ours
(row pointers + column indices + packed codes + codebook).

Part 2, end to end: LeNet-300-100 and LeNet-5 pruned and shared at the Deep Compression
paper's densities and bits (as in ``benchmarks/deep_compression_mnist.py``), and
AlexNet's fc6/fc7/fc8 (9216-4096-4096-1000) at 9 % / 9 % / 25 % and 5 bits: batch-1
latency of the converted model vs the dense (baked) one, and the resident memory of each
loaded in a fresh process (``VmRSS`` growth over the interpreter with the kernels loaded, and ``VmHWM``).
"ours" builds every layer with ``inference_module`` from its kept positions, codes and
codebook on a meta-device skeleton (what ``load_compressed(..., inference=True)`` does,
no dense weight anywhere); "load+convert" loads the ``.tpsc`` file with
``load_compressed(..., inference=True)`` when that exists, else loads the parametrized
model and calls :func:`torchprune_share.to_inference`.

    python benchmarks/inference.py            # full run, writes benchmarks/results/inference.*
    python benchmarks/inference.py --quick    # small sizes: a correctness run, no files
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchprune_share import (
    bake,
    level_prune,
    load_compressed,
    register_weight_sharing,
    save_compressed,
)
from torchprune_share.inference import (
    CompressedLinear,
    inference_module,
    inference_summary,
    to_inference,
    weight_parts,
)
from torchprune_share.models import LeNet5, LeNet300100

RESULTS = Path(__file__).resolve().parent / "results"

# Density and bits per layer: Han et al. Table 2 (LeNet-300-100), Table 3 (LeNet-5) and
# Table 4 (AlexNet's fully connected layers).
MODELS = {
    "lenet300": {"fc1": (0.08, 6), "fc2": (0.09, 6), "fc3": (0.26, 6)},
    "lenet5": {"conv1": (0.66, 8), "conv2": (0.12, 8), "fc1": (0.08, 5), "fc2": (0.19, 5)},
    "alexnet_fc": {"fc6": (0.09, 5), "fc7": (0.09, 5), "fc8": (0.25, 5)},
}


class AlexNetFC(nn.Sequential):
    """AlexNet's classifier: fc6 (9216 -> 4096), fc7 (4096 -> 4096), fc8 (4096 -> 1000)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc6 = nn.Linear(9216, 4096)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU()
        self.fc8 = nn.Linear(4096, 1000)


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "lenet300":
        return LeNet300100(28), (1, 1, 28, 28)
    if name == "lenet5":
        return LeNet5(28), (1, 1, 28, 28)
    return AlexNetFC(), (1, 9216)


def rss_kib() -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of this process in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, one call of each per round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm up (and compile the kernels for these types)
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# -- part 1: one layer -----------------------------------------------------------------------
def random_layer(size: int, density: float, bits: int, seed: int):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(size * size) < density)
    codes = rng.integers(0, 2**bits, positions.size)
    codebook = torch.from_numpy(rng.standard_normal(2**bits).astype(np.float32) * 0.05)
    ours = CompressedLinear.from_parts(size, size, positions, codes, codebook)
    dense = torch.zeros(size * size)
    dense[torch.from_numpy(positions)] = codebook[torch.from_numpy(codes)]
    dense = dense.view(size, size)
    return dense, dense.to_sparse_csr(), ours


def csr_bytes(csr: torch.Tensor) -> int:
    parts = (csr.crow_indices(), csr.col_indices(), csr.values())
    return sum(p.numel() * p.element_size() for p in parts)


def time_layer(x: torch.Tensor, dense, csr, ours, rounds: int) -> dict[str, float]:
    fns = {
        "dense": lambda: F.linear(x, dense),
        "csr": lambda: torch.sparse.mm(csr, x.t()).t(),
        "ours": lambda: ours(x),
    }
    return interleaved(fns, rounds)


def time_models(x: torch.Tensor, dense_model, fast, rounds: int) -> dict[str, float]:
    return interleaved({"dense": lambda: dense_model(x), "ours": lambda: fast(x)}, rounds)


def layer_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    with torch.inference_mode():
        for sparsity in args.sparsities:
            for bits in args.bits:
                dense, csr, ours = random_layer(args.size, 1 - sparsity, bits, args.seed)
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    for batch in args.batches:
                        x = torch.randn(batch, args.size)
                        ref = F.linear(x, dense)
                        err = float((ours(x) - ref).abs().max() / ref.abs().max())
                        assert err < 1e-5, f"relative error {err:.2e}"
                        t = time_layer(x, dense, csr, ours, args.rounds)
                        rows.append(
                            {
                                "size": args.size,
                                "sparsity": sparsity,
                                "bits": bits,
                                "threads": threads,
                                "batch": batch,
                                **{f"{k}_ms": 1e3 * v for k, v in t.items()},
                                "vs_dense": t["dense"] / t["ours"],
                                "vs_csr": t["csr"] / t["ours"],
                                "dense_bytes": dense.numel() * 4,
                                "csr_bytes": csr_bytes(csr),
                                "ours_bytes": ours.nbytes,
                                "rel_err": err,
                            }
                        )
                        print(layer_line(rows[-1]), flush=True)
    return rows


LAYER_HEAD = (
    "| sparsity | bits | threads | batch | dense ms | CSR ms | ours ms | x dense | x CSR "
    "| dense MB | CSR MB | ours MB | dense/ours bytes |\n" + "|---" * 13 + "|"
)


def layer_line(r: dict) -> str:
    return (
        f"| {100 * r['sparsity']:.0f} % | {r['bits']} | {r['threads']} | {r['batch']} "
        f"| {r['dense_ms']:.3f} | {r['csr_ms']:.3f} | {r['ours_ms']:.3f} "
        f"| {r['vs_dense']:.2f} | {r['vs_csr']:.2f} | {r['dense_bytes'] / 1e6:.1f} "
        f"| {r['csr_bytes'] / 1e6:.1f} | {r['ours_bytes'] / 1e6:.2f} "
        f"| {r['dense_bytes'] / r['ours_bytes']:.1f} |"
    )


# -- part 2: end to end ----------------------------------------------------------------------
def compress(model: nn.Module, name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for layer, (density, bits) in MODELS[name].items():
        module = getattr(model, layer)
        level_prune(module, amount=1 - density)
        register_weight_sharing(module, bits=bits)
    return model


def load_inference(model: nn.Module, path: str) -> nn.Module:
    try:
        return load_compressed(model, path, inference=True)
    except TypeError:  # no file route yet: load, then convert
        # Converted for the batch-1 latency measured here.
        return to_inference(load_compressed(model, path), progress=False, batch_sizes=(1,))


def warm_kernels() -> None:
    """Load (or compile) the kernels once, so the JIT's own memory is not the model's."""
    with torch.inference_mode():
        for k in (2, 32, 512):  # nibble, uint8, uint16 codes
            lin = CompressedLinear.from_parts(
                4, 8, np.arange(0, 32, 3), np.arange(11) % k, torch.ones(k)
            )
            for shape in ((1, 8), (3, 8)):
                lin(torch.randn(shape))
            lin.matmul(torch.randn(8, 3), transposed=True)
        vals = CompressedLinear.from_parts(4, 8, np.arange(0, 32, 3), values=np.ones(11))
        vals(torch.randn(1, 8)), vals(torch.randn(3, 8)), vals.matmul(torch.randn(8, 3), True)


def save_parts(fast: nn.Module, compressed: nn.Module, path: str) -> None:
    """Write each converted layer's kept positions, codes, codebook, bias and backend."""
    spec = {}
    for row in inference_summary(fast).rows:
        module = compressed.get_submodule(row.name)
        p = weight_parts(module)
        bias = module.bias.detach().clone() if module.bias is not None else None
        spec[row.name] = {
            "kept": p.positions,
            "codes": p.codes,
            "codebook": p.codebook,
            "values": p.values,
            "bias": bias,
            "backend": row.backend,
        }
    torch.save(spec, path)


def from_parts(name: str, path: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The file route without a file reader: a meta-device skeleton whose layers are
    built from their parts by ``inference_module``, so no dense weight ever exists."""
    with torch.device("meta"):
        model, shape = build(name)
    for qname, p in torch.load(path, weights_only=False).items():
        module = model.get_submodule(qname)
        backend = p.pop("backend")
        new = inference_module(module, **p, backend=backend, name=qname)
        parent, _, child_name = qname.rpartition(".")
        setattr(model.get_submodule(parent), child_name, new)
    return model, shape


def child(args: argparse.Namespace) -> None:
    """Print the resident memory of one model loaded in this fresh process (JSON)."""
    torch.set_num_threads(args.threads[0])
    start_rss, _ = rss_kib()
    warm_kernels()
    base_rss, _ = rss_kib()
    if args.child_mode == "parts":
        model, shape = from_parts(args.child_model, args.child_path)
    else:
        model, shape = build(args.child_model)
    if args.child_mode == "compressed":
        model = load_inference(model, args.child_path)
    model.eval()
    with torch.inference_mode():
        model(torch.randn(shape))
    gc.collect()
    # Freed memory that glibc keeps in its heap is no model's: hand it back first.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss, hwm = rss_kib()
    out = {"rss_mib": (rss - base_rss) / 1024, "hwm_mib": (hwm - base_rss) / 1024}
    out["runtime_mib"] = (base_rss - start_rss) / 1024
    print(json.dumps(out))


def measure_child(args: argparse.Namespace, model: str, mode: str, path: str) -> dict:
    cmd = [sys.executable, __file__, "--child-model", model, "--child-mode", mode]
    cmd += ["--child-path", path, "--threads", str(args.threads[0])]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def model_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    torch.set_num_threads(args.threads[0])
    for name in args.models:
        model, shape = build(name)
        compress(model, name, args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / f"{name}.tpsc")
            file_bytes = save_compressed(model, path)
            dense_model = bake(load_compressed(build(name)[0], path))
            fast = load_inference(build(name)[0], path)
            x = torch.randn(shape)
            with torch.inference_mode():
                ref = dense_model(x)
                err = float((fast(x) - ref).abs().max() / ref.abs().max())
                t = time_models(x, dense_model, fast, args.rounds)
            mem_dense = measure_child(args, name, "dense", path)
            mem_ours = measure_child(args, name, "compressed", path)
            parts_path = str(Path(tmp) / f"{name}.parts.pt")
            save_parts(fast, model, parts_path)
            mem_parts = measure_child(args, name, "parts", parts_path)
        row = {
            "model": name,
            "threads": args.threads[0],
            "file_bytes": file_bytes,
            "dense_ms": 1e3 * t["dense"],
            "ours_ms": 1e3 * t["ours"],
            "speedup": t["dense"] / t["ours"],
            "dense_rss_mib": mem_dense["rss_mib"],
            "ours_rss_mib": mem_parts["rss_mib"],
            "ours_hwm_mib": mem_parts["hwm_mib"],
            "load_convert_rss_mib": mem_ours["rss_mib"],
            "load_convert_hwm_mib": mem_ours["hwm_mib"],
            "dense_hwm_mib": mem_dense["hwm_mib"],
            "kernel_runtime_mib": mem_ours["runtime_mib"],
            "rel_err": err,
            "backends": [r.backend for r in inference_summary(fast).rows],
        }
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
        rows.append(row)
        print(model_line(row), flush=True)
        print(inference_summary(fast), flush=True)
    return rows


MODEL_HEAD = (
    "| model | dense ms | ours ms | speedup | dense RSS MiB | ours RSS MiB | dense/ours RSS "
    "| load+convert RSS MiB | peak dense / ours / load+convert MiB | backends |\n"
    + "|---" * 10
    + "|"
)


def model_line(r: dict) -> str:
    ratio = r["dense_rss_mib"] / max(r["ours_rss_mib"], 1e-3)
    return (
        f"| {r['model']} | {r['dense_ms']:.3f} | {r['ours_ms']:.3f} | {r['speedup']:.2f} "
        f"| {r['dense_rss_mib']:.1f} | {r['ours_rss_mib']:.1f} | {ratio:.1f} "
        f"| {r['load_convert_rss_mib']:.1f} | {r['dense_hwm_mib']:.0f} / {r['ours_hwm_mib']:.0f}"
        f" / {r['load_convert_hwm_mib']:.0f} | {'/'.join(r['backends'])} |"
    )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one thread, no files")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--part", choices=["all", "layers", "models"], default="all")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-mode", help=argparse.SUPPRESS)
    p.add_argument("--child-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.size, args.sparsities, args.bits = 512, [0.9], [4]
        args.batches, args.threads, args.rounds = [1, 8], [1], 3
        args.models = [m for m in args.models if m != "alexnet_fc"]
    elif args.out is None:
        args.out = RESULTS
    return args


def main() -> None:
    args = parse()
    if args.child_model:
        child(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    layers, models = [], []
    if args.part in ("all", "layers"):
        print(LAYER_HEAD)
        layers = layer_rows(args)
    if args.part in ("all", "models"):
        print(MODEL_HEAD)
        models = model_rows(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "inference.json").write_text(
            json.dumps({"layers": layers, "models": models}, indent=1)
        )
        table = [LAYER_HEAD, *map(layer_line, layers), "", MODEL_HEAD, *map(model_line, models)]
        (args.out / "inference.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
