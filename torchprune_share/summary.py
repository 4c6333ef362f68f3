"""A per-tensor table of what compression did to a model, with an *estimated* stored size.

The byte counts are estimates of Deep Compression's storage (Han et al. 2016, §2-3), not
of a file this package writes:

* ``dense``: every entry as fp32;
* ``sparse``: the nonzeros as fp32 values plus a relative index of ``p`` bits (the gap to
  the previous nonzero; a gap beyond ``2**p`` costs a filler entry), ``p`` chosen per
  tensor in 1..16 unless given;
* ``codes``: a shared tensor's dense code array (``ceil(log2(k + 1))`` bits with a pruned
  zero code, ``ceil(log2(k))`` without) plus its fp32 codebook;
* ``sparse codes``: the relative index with ``ceil(log2(k))``-bit codes, plus the codebook.

Each tensor is counted in the cheapest format that applies to it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import atomic_open, atomic_write_text
from .names import expand_default_names, named_tensors, resolve_tensor
from .parametrizations import WeightSharing
from .state import TensorState

__all__ = ["CompressionSummary", "TensorSummary", "compression_summary", "sparse_entries"]

COLUMNS = (
    "name",
    "shape",
    "numel",
    "nonzeros",
    "sparsity",
    "bits",
    "distinct_values",
    "dense_bytes",
    "estimated_bytes",
    "ratio",
    "format",
)


@dataclass
class TensorSummary:
    """One row of a :class:`CompressionSummary` (the totals row has ``shape=()``, ``bits=None``).

    Example:
        >>> r = compression_summary(nn.Linear(8, 4, bias=False)).rows[0]
        >>> r.values()["shape"], r.sparsity, r.ratio, r.format
        ('4x8', 0.0, 1.0, 'dense')
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    bits: int | None
    distinct_values: int | None
    dense_bytes: int
    estimated_bytes: int
    format: str

    @property
    def sparsity(self) -> float:
        """Fraction of zero entries."""
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    @property
    def ratio(self) -> float:
        """Dense fp32 bytes over estimated bytes."""
        return self.dense_bytes / self.estimated_bytes if self.estimated_bytes else math.inf

    def values(self) -> dict[str, object]:
        """The row as ``{column: value}``, columns as in :data:`COLUMNS`."""
        return {
            "name": self.name,
            "shape": "x".join(map(str, self.shape)),
            "numel": self.numel,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "bits": "" if self.bits is None else self.bits,
            "distinct_values": "" if self.distinct_values is None else self.distinct_values,
            "dense_bytes": self.dense_bytes,
            "estimated_bytes": self.estimated_bytes,
            "ratio": self.ratio,
            "format": self.format,
        }


def _bytes(bits: int) -> int:
    return (bits + 7) // 8


def sparse_entries(value: Tensor, index_bits: int) -> int:
    r"""Entries of the relative-index sparse format: nonzeros plus filler entries.

    A nonzero at flat position ``i`` after one at ``j`` stores the gap ``i - j``
    (``i + 1`` for the first); a gap ``d`` takes :math:`\lceil d / 2^p \rceil` entries.

    Args:
        value (Tensor): the tensor (flattened in C order).
        index_bits (int): ``p``, bits of one relative index.

    Returns:
        The number of stored entries.

    Example:
        >>> sparse_entries(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0]), 3)
        3
    """
    gaps = _gaps(value)
    return int(((gaps - 1) >> index_bits).sum() + gaps.size)


def _gaps(value: Tensor) -> np.ndarray:
    pos = torch.nonzero(value.detach().reshape(-1)).flatten().cpu().numpy().astype(np.int64)
    return np.diff(pos, prepend=-1)


def _sparse_bits(gaps: np.ndarray, value_bits: int, index_bits: int | None) -> tuple[int, int]:
    """(bits, p) of the sparse format, ``p`` the best in 1..16 unless given."""
    candidates = [index_bits] if index_bits is not None else range(1, 17)
    best = None
    for p in candidates:
        entries = int(((gaps - 1) >> p).sum() + gaps.size)
        bits = entries * (value_bits + p)
        if best is None or bits < best[0]:
            best = (bits, p)
    assert best is not None
    return best


def _summarize(
    qualified: str, module: nn.Module, name: str, index_bits: int | None, distinct: bool
) -> TensorSummary:
    state = TensorState.of(module, name)
    value, reparam = state.value(), state.reparam
    numel = value.numel()
    gaps = _gaps(value)
    nonzeros = int(gaps.size)
    dense = 4 * numel
    n_distinct = int(torch.unique(value).numel()) if distinct and numel else None
    if isinstance(reparam, WeightSharing):
        k = max(reparam.num_centroids, 1)
        codebook_bytes = 4 * state.parameter().numel()
        pruned = bool((~reparam.kept()).any())
        dense_code_bits = max(1, math.ceil(math.log2(k + 1 if pruned else k)))
        code_bits = max(1, math.ceil(math.log2(k)))
        sparse_bits, p = _sparse_bits(gaps, code_bits, index_bits)
        options = {
            "codes": _bytes(numel * dense_code_bits) + codebook_bytes,
            f"sparse codes (p={p})": _bytes(sparse_bits) + codebook_bytes,
        }
        bits: int | None = reparam.bits
    else:
        sparse_bits, p = _sparse_bits(gaps, 32, index_bits)
        options = {"dense": dense, f"sparse (p={p})": _bytes(sparse_bits)}
        bits = value.element_size() * 8
    fmt = min(options, key=lambda f: options[f])
    return TensorSummary(
        name=qualified,
        shape=tuple(value.shape),
        numel=numel,
        nonzeros=nonzeros,
        bits=bits,
        distinct_values=n_distinct,
        dense_bytes=dense,
        estimated_bytes=options[fmt],
        format=fmt,
    )


class CompressionSummary:
    r"""Per-tensor rows and a totals row; prints as a table, writes CSV or Markdown.

    Attributes:
        rows (list[TensorSummary]): one per tensor, in model order.
        total (TensorSummary): sums over the rows.

    Example:
        >>> s = compression_summary(nn.Linear(4, 2))
        >>> [r.name for r in s.rows], s.total.numel
        (['weight', 'bias'], 10)
    """

    def __init__(self, rows: Sequence[TensorSummary]) -> None:
        self.rows = list(rows)
        self.total = TensorSummary(
            name="total",
            shape=(),
            numel=sum(r.numel for r in self.rows),
            nonzeros=sum(r.nonzeros for r in self.rows),
            bits=None,
            distinct_values=None,
            dense_bytes=sum(r.dense_bytes for r in self.rows),
            estimated_bytes=sum(r.estimated_bytes for r in self.rows),
            format="",
        )

    def _cells(self) -> list[list[str]]:
        out = []
        for r in [*self.rows, self.total]:
            v = r.values()
            out.append(
                [
                    str(v["name"]),
                    str(v["shape"]),
                    f"{r.numel:,}",
                    f"{r.nonzeros:,}",
                    f"{100 * r.sparsity:.2f}%",
                    str(v["bits"]),
                    str(v["distinct_values"]),
                    f"{r.dense_bytes:,}",
                    f"{r.estimated_bytes:,}",
                    f"{r.ratio:.2f}x",
                    r.format,
                ]
            )
        return out

    _HEADERS = (
        "tensor",
        "shape",
        "numel",
        "nonzeros",
        "sparsity",
        "bits",
        "distinct",
        "dense B (fp32)",
        "est. B",
        "ratio",
        "format (estimate)",
    )

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(self._HEADERS)]
        left = {0, 1, 10}

        def line(row: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()

        rule = "-" * len(line(self._HEADERS))
        body = [line(c) for c in cells[:-1]]
        return "\n".join([line(self._HEADERS), rule, *body, rule, line(cells[-1]), _NOTE])

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows and the totals row as CSV, columns :data:`COLUMNS`.

        Written crash-safely (:func:`~torchprune_share.atomic.atomic_open`): a file already
        at ``path`` is replaced only by a complete one.

        Args:
            path (str or Path): the file.

        Returns:
            The path written.

        Example:
            >>> p = compression_summary(nn.Linear(8, 4)).to_csv("summary.csv")
            >>> p.read_text().splitlines()[-1]
            'total,,36,36,0.0,,,144,144,1.0,'
        """
        path = Path(path)
        with atomic_open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            for r in [*self.rows, self.total]:
                writer.writerow(r.values())
        return path

    def to_markdown(self, path: str | Path | None = None) -> str:
        """The table as GitHub Markdown (and written to ``path``, crash-safely, if given).

        Args:
            path (str or Path, optional): a file to write.

        Returns:
            The Markdown text.

        Example:
            >>> print(compression_summary(nn.Linear(8, 4)).to_markdown().splitlines()[2])
            | weight | 4x8 | 32 | 32 | 0.00% | 32 | 32 | 128 | 128 | 1.00x | dense |
        """
        cells = self._cells()
        cells[-1] = [f"**{c}**" if c else c for c in cells[-1]]
        align = ["---" if i in (0, 1, 10) else "---:" for i in range(len(self._HEADERS))]
        lines = ["| " + " | ".join(row) + " |" for row in [self._HEADERS, align, *cells]]
        text = "\n".join(lines) + f"\n\n{_NOTE}\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def __repr__(self) -> str:
        t = self.total
        return (
            f"CompressionSummary({len(self.rows)} tensors, {t.numel:,} entries, "
            f"sparsity {t.sparsity:.2%}, estimated ratio {t.ratio:.2f}x)"
        )


_NOTE = (
    "Estimated bytes: relative-index sparse format and/or k-means codes + fp32 codebook "
    "(Deep Compression); an estimate, not a file size."
)


def compression_summary(
    model: nn.Module,
    param_names: Sequence[str] | None = None,
    *,
    index_bits: int | None = None,
    distinct: bool = True,
) -> CompressionSummary:
    r"""Summarize every tensor of ``model``: sparsity, bits, distinct values, estimated size.

    Args:
        model (nn.Module): the model (pruned and/or shared, or not).
        param_names (Sequence[str], optional): tensors by user-facing name (``"fc1.weight"``);
            default every parameter (biases included), reparametrized ones by their own name;
            ``"*"`` stands for every weight of dim >= 2 (as in the scans and policies).
        index_bits (int, optional): bits of a relative index in the sparse formats; default
            the best in 1..16 per tensor (Han et al. used 8 for conv, 5 for fc).
        distinct (bool): count distinct values (a sort of each tensor). Default: True.

    Returns:
        A :class:`CompressionSummary`; ``print`` it, or call ``to_csv`` / ``to_markdown``.

    Example:
        >>> from torchprune_share import level_prune
        >>> net = nn.Sequential(nn.Linear(100, 10, bias=False))
        >>> _ = level_prune(net[0], amount=0.9)
        >>> row = compression_summary(net).rows[0]
        >>> row.nonzeros, row.format, row.estimated_bytes < row.dense_bytes
        (100, 'sparse (p=6)', True)
    """
    if index_bits is not None:
        if isinstance(index_bits, bool) or not isinstance(index_bits, int):
            raise TypeError(
                f"index_bits must be an int in [1, 16], got {type(index_bits).__name__}"
            )
        if not 1 <= index_bits <= 16:
            raise ValueError(f"index_bits must be an int in [1, 16], got {index_bits}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(param_names, str):
        raise TypeError("param_names must be a sequence of names, not a str")
    if param_names is None:
        targets = named_tensors(model)
    else:
        names = expand_default_names(model, list(param_names))
        targets = [(q, *resolve_tensor(model, q)) for q in names]
    rows = [_summarize(q, m, n, index_bits, distinct) for q, m, n in targets]
    return CompressionSummary(rows)
