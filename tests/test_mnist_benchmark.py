"""A short run of benchmarks/deep_compression_mnist.py on real MNIST (skipped without it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist is absent")
def test_quick_mnist_benchmark(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "deep_compression_mnist.py"),
        "--data-dir",
        str(MNIST_DIR),
        "--quick",
        "--models",
        "lenet300",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    rows = json.loads((tmp_path / "mnist_results.json").read_text())
    (row,) = rows
    assert row["reload_identical"] is True
    assert row["error"] < 20.0  # one epoch on 6,000 images
    assert row["file_bytes"] == (tmp_path / "lenet300-0.tpsc").stat().st_size
    assert row["ratio"] > 25.0
    assert "| lenet300 |" in (tmp_path / "mnist_table.md").read_text()
