"""Offline data: digits splits, MNIST IDX reading (when present), batching."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from torchprune_share.demo.data import (
    MNIST_FILES,
    BatchLoader,
    load_digits,
    load_mnist,
    make_loaders,
)

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_digits_splits_are_disjoint_and_seeded() -> None:
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert (len(a.train), len(a.val), len(a.test)) == (1079, 359, 359)
    x = a.train.tensors[0]
    assert x.shape[1:] == (1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    c = load_digits(seed=1)
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])


def test_batch_loader_covers_every_sample_once_per_epoch() -> None:
    ds = TensorDataset(torch.arange(10.0), torch.arange(10))
    loader = BatchLoader(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 3
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(ds, 0)


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_mnist_reader_on_a_tiny_fake_set(tmp_path: Path) -> None:
    imgs = bytes(range(256)) * 2 * (28 * 28 * 12 // 512) + bytes(28 * 28 * 12 % 512)
    for key, n in (("train", 12), ("test", 12)):
        _write_idx(tmp_path / MNIST_FILES[f"{key}_images"], 0x803, (n, 28, 28), imgs[: n * 784])
        _write_idx(
            tmp_path / MNIST_FILES[f"{key}_labels"], 0x801, (n,), bytes(i % 10 for i in range(n))
        )
    s = load_mnist(tmp_path, n_val=2)
    assert (len(s.train), len(s.val), len(s.test)) == (10, 2, 12)
    assert s.test.tensors[1].tolist() == [i % 10 for i in range(12)]
    assert float(s.test.tensors[0].max()) <= 1.0
    (tmp_path / MNIST_FILES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path)


def test_truncated_idx_file_is_refused(tmp_path: Path) -> None:
    for key in ("train", "test"):
        _write_idx(tmp_path / MNIST_FILES[f"{key}_images"], 0x803, (5, 28, 28), bytes(100))
        _write_idx(tmp_path / MNIST_FILES[f"{key}_labels"], 0x801, (5,), bytes(5))
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)


@pytest.mark.mnist
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist is absent")
def test_real_mnist_loads() -> None:
    s = load_mnist(MNIST_DIR)
    assert (len(s.train), len(s.val), len(s.test)) == (55000, 5000, 10000)
    counts = torch.bincount(s.test.tensors[1], minlength=10)
    assert counts.sum() == 10000 and int(counts.min()) > 800
    train, _, _ = make_loaders(s, batch_size=128)
    x, y = next(iter(train))
    assert x.shape == (128, 1, 28, 28) and y.dtype == torch.int64
