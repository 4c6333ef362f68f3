"""Offline data sets: scikit-learn's bundled digits (the default) and MNIST IDX files.

Nothing here downloads anything. MNIST is read from a folder holding the four standard
files under torchvision's names (``train-images-idx3-ubyte.gz`` ...).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["MNIST_FILES", "BatchLoader", "Splits", "load_digits", "load_mnist", "make_loaders"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass
class Splits:
    """Train / validation / test tensors of an image classification data set.

    Images are ``float32`` of shape ``(N, 1, H, W)`` scaled to [0, 1]; labels ``int64``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    image_size: int
    num_classes: int = 10
    name: str = ""


def _split(x: np.ndarray, y: np.ndarray, n_val: int, n_test: int, seed: int) -> tuple:
    order = np.random.default_rng(seed).permutation(len(x))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return train, val, test


def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x).float().unsqueeze(1), torch.from_numpy(y).long())


def load_digits(*, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> Splits:
    """Load scikit-learn's bundled 8x8 digits (1,797 images), split at random.

    Args:
        seed (int): seed of the split. Default: 0.
        val_fraction (float): share of the images for validation. Default: 0.2.
        test_fraction (float): share of the images for testing. Default: 0.2.

    Returns:
        :class:`Splits` with ``image_size=8``.

    Example:
        >>> s = load_digits()
        >>> len(s.train), len(s.val), len(s.test), s.train.tensors[0].shape[1:]
        (1079, 359, 359, torch.Size([1, 8, 8]))
    """
    from sklearn.datasets import load_digits as sk_digits

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    n = len(x)
    train, val, test = _split(x, y, round(n * val_fraction), round(n * test_fraction), seed)
    return Splits(
        _dataset(x[train], y[train]),
        _dataset(x[val], y[val]),
        _dataset(x[test], y[test]),
        image_size=8,
        name="digits",
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not an IDX file (too short)")
    got, n = struct.unpack(">II", data[:8])
    if got != magic:
        raise ValueError(
            f"{path}: not an IDX file of the expected kind (magic {got:#x}, want {magic:#x})"
        )
    if magic == 0x801:
        arr = np.frombuffer(data, dtype=np.uint8, offset=8)
        shape: tuple[int, ...] = (n,)
    else:
        rows, cols = struct.unpack(">II", data[8:16])
        arr = np.frombuffer(data, dtype=np.uint8, offset=16)
        shape = (n, rows, cols)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({arr.size} values, header says {shape})")
    return arr.reshape(shape)


def load_mnist(data_dir: str | Path, *, seed: int = 0, n_val: int = 5000) -> Splits:
    """Load MNIST from the four IDX ``.gz`` files in ``data_dir`` (no download).

    The 60,000 training images are split into ``60000 - n_val`` for training and
    ``n_val`` for validation; the 10,000 test images are the test set.

    Args:
        data_dir (str or Path): folder with the files named in :data:`MNIST_FILES`.
        seed (int): seed of the train/validation split. Default: 0.
        n_val (int): validation images taken from the training set. Default: 5000.

    Returns:
        :class:`Splits` with ``image_size=28``.

    Raises:
        FileNotFoundError: naming every missing file.

    Example:
        >>> s = load_mnist("../shared/data/mnist")  # doctest: +SKIP
        >>> len(s.train), len(s.test)  # doctest: +SKIP
        (55000, 10000)
    """
    root = Path(data_dir)
    missing = [name for name in MNIST_FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing in {root}: {', '.join(missing)} (expected the four IDX .gz "
            "files under torchvision's names; nothing is downloaded)"
        )
    xtr = _read_idx(root / MNIST_FILES["train_images"], 0x803).astype(np.float32) / 255.0
    ytr = _read_idx(root / MNIST_FILES["train_labels"], 0x801).astype(np.int64)
    xte = _read_idx(root / MNIST_FILES["test_images"], 0x803).astype(np.float32) / 255.0
    yte = _read_idx(root / MNIST_FILES["test_labels"], 0x801).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(xtr))
    val, train = order[:n_val], order[n_val:]
    return Splits(
        _dataset(xtr[train], ytr[train]),
        _dataset(xtr[val], ytr[val]),
        _dataset(xte, yte),
        image_size=28,
        name="mnist",
    )


class BatchLoader:
    """Batches of an in-memory :class:`TensorDataset` by slicing, without per-sample collation.

    ``torch.utils.data.DataLoader`` indexes and collates sample by sample, which costs
    more than a small model's whole step; slicing whole tensors does not.

    Args:
        dataset (TensorDataset): the tensors to batch.
        batch_size (int): samples per batch.
        shuffle (bool): a new random order every epoch. Default: False.
        generator (torch.Generator, optional): the shuffling's randomness.

    Example:
        >>> ds = TensorDataset(torch.arange(10.0), torch.arange(10))
        >>> [len(y) for _, y in BatchLoader(ds, batch_size=4)]
        [4, 4, 2]
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        tensors = self.dataset.tensors
        n = len(tensors[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield tuple(t[start : start + self.batch_size] for t in tensors)
            else:
                idx = order[start : start + self.batch_size]
                yield tuple(t[idx] for t in tensors)


def make_loaders(
    splits: Splits, *, batch_size: int = 64, eval_batch_size: int = 512, seed: int = 0
) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    """Batch loaders for :class:`Splits`; the training loader shuffles with a seeded generator.

    Args:
        splits (Splits): the data.
        batch_size (int): training batch size. Default: 64.
        eval_batch_size (int): validation/test batch size. Default: 512.
        seed (int): seed of the shuffling. Default: 0.

    Returns:
        ``(train_loader, val_loader, test_loader)``.

    Example:
        >>> train, val, test = make_loaders(load_digits())
        >>> next(iter(train))[0].shape
        torch.Size([64, 1, 8, 8])
    """
    g = torch.Generator().manual_seed(seed)
    return (
        BatchLoader(splits.train, batch_size, shuffle=True, generator=g),
        BatchLoader(splits.val, eval_batch_size),
        BatchLoader(splits.test, eval_batch_size),
    )
