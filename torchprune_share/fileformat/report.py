"""Per-tensor compressed sizes of a model or ``.tpsc`` file (Deep Compression's tables).

A report reads a file with the same bounded reader as the loader and computes the
other columns (sizes the records would have with packed streams) from the decoded
counts, never from sizes the file declares, so a hostile file cannot make it allocate.

Example:
    >>> report = compression_report(nn.Sequential(nn.Linear(4, 4)))
    >>> report.file_bytes, report.overhead
    (126, 21)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from torch import nn

from ..atomic import atomic_open, atomic_write_text
from ..codec.wire import encode_varint
from .reader import Record, parse, read_source
from .spec import NUMPY_DTYPES, PRUNED, SHARED
from .writer import best_packed_width, encode_model, packed_positions_size, record_header

__all__ = ["COLUMNS", "TABLE_HEAD", "CompressionReport", "compression_report"]


def _packed_positions_size(rec: Record) -> int:
    """Bytes of ``rec``'s positions block packed at its best fixed width (no Huffman).

    The file's width minimises the Huffman-coded size and can be far from the best
    packed width (e.g. 11 bits where 5 would do), so P and P+Q are taken at their own.
    Computed from the decoded positions (as many as the file's bytes could hold).
    """
    if rec.positions is None:
        return 0
    return packed_positions_size(rec.positions, best_packed_width(rec.positions))


def _pruned_size(rec: Record) -> int:
    """Bytes of ``rec`` stored as a pruned record with packed relative indices."""
    size = len(record_header(rec.name, PRUNED, rec.dtype, rec.shape))
    size += len(encode_varint(rec.n_kept))
    size += _packed_positions_size(rec)
    return size + rec.n_kept * NUMPY_DTYPES[rec.dtype].itemsize


def _report_row(rec: Record) -> dict[str, Any]:
    dense = rec.numel * NUMPY_DTYPES[rec.dtype].itemsize
    packed = rec.size + sum(s.packed_size - s.size for s in rec.streams)
    if rec.positions is not None:
        # Swap the positions block packed at the file's width for the best packed one.
        packed += _packed_positions_size(rec) - (1 + rec.streams[0].packed_size)
    return dict(
        tensor=rec.name,
        weights=rec.numel,
        density=rec.n_kept / rec.numel if rec.numel else 1.0,
        bits=rec.config.bits if rec.config is not None else None,
        index_bits=rec.index_bits,
        dense=dense,
        P=_pruned_size(rec) if rec.kind == SHARED else packed,
        PQ=packed,
        PQH=rec.size,
        ratio=dense / rec.size,
    )


COLUMNS = ("tensor", "weights", "density", "bits", "index_bits", "dense", "P", "PQ", "PQH", "ratio")
TABLE_HEAD = (
    *("tensor", "weights", "density", "bits", "idx bits"),
    *("dense B", "P B", "P+Q B", "P+Q+H B", "ratio"),
)


@dataclass
class CompressionReport:
    """Per-tensor sizes in the columns of Deep Compression's Tables 2-4.

    ``rows`` hold, per stored tensor: ``tensor``, ``weights`` (entries), ``density``
    (kept fraction), ``bits`` (sharing width), ``index_bits`` (relative-index width),
    ``dense`` (bytes of the dense tensor in its dtype: fp32 for an fp32 model), and the
    bytes of the tensor's record stored three ways: ``P`` after pruning (relative
    indices packed at their width + kept values in the tensor's dtype), ``PQ`` after
    sharing (packed relative indices + packed codes + codebook), ``PQH`` after Huffman
    coding (the record's real bytes in the file); ``ratio`` is ``dense / PQH``. A raw
    tensor costs its bytes plus its name and shape in every column; a pruned-only tensor
    has ``P == PQ``. ``P`` and ``PQ`` are exactly the sizes the record would have in a
    file written with ``huffman=False`` (each at its best packed index width), so
    ``PQH <= PQ``. ``overhead`` is the preamble plus the record count:
    ``file_bytes == sum(PQH) + overhead``.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> from torchprune_share.fileformat import compression_report
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> report = compression_report(net)
        >>> report.file_bytes == report.totals()["PQH"] + report.overhead
        True
        >>> print(report.to_table().splitlines()[0].split()[:4])
        ['tensor', 'weights', 'density', 'bits']
    """

    rows: list[dict[str, Any]]
    file_bytes: int
    overhead: int

    COLUMNS = COLUMNS

    def totals(self) -> dict[str, Any]:
        """The totals row (density over all stored entries, ratio of the sums).

        Returns:
            A dict with the keys of :attr:`COLUMNS`; ``tensor`` is ``"total"``.

        Example:
            >>> r = compression_report(nn.Sequential(nn.Linear(4, 4)))
            >>> r.totals()["tensor"], r.totals()["weights"]
            ('total', 20)
        """
        weights = sum(r["weights"] for r in self.rows)
        kept = sum(r["weights"] * r["density"] for r in self.rows)
        out = dict(tensor="total", weights=weights, bits=None, index_bits=None)
        out["density"] = kept / weights if weights else 1.0
        out.update({col: sum(r[col] for r in self.rows) for col in ("dense", "P", "PQ", "PQH")})
        out["ratio"] = out["dense"] / out["PQH"] if out["PQH"] else float("inf")
        return out

    def _cells(self) -> list[list[str]]:
        def cell(r: dict[str, Any], col: str) -> str:
            value = r[col]
            if value is None:
                return "-"
            if col == "density":
                return f"{100 * value:.1f}%"
            return f"{value:.1f}x" if col == "ratio" else str(value)

        return [[cell(r, col) for col in COLUMNS] for r in [*self.rows, self.totals()]]

    def _footer(self) -> str:
        records = self.file_bytes - self.overhead
        return f"file: {self.file_bytes} bytes = {records} in records + {self.overhead} header"

    def to_table(self) -> str:
        """A plain-text table with a totals row and the file size.

        Returns:
            The table, one line per tensor, then totals and the file size.

        Example:
            >>> print(compression_report(nn.Sequential(nn.Linear(4, 4))).to_table())  # doctest: +SKIP
        """
        body = self._cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(TABLE_HEAD)]

        def fmt(row: list[str] | tuple[str, ...]) -> str:
            cells = [
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells)

        lines = [fmt(TABLE_HEAD), fmt(["-" * w for w in widths]), *map(fmt, body)]
        return "\n".join([*lines, self._footer()])

    def to_csv(self, path: str | Path) -> None:
        """Write the rows and the totals row as CSV (header: :attr:`COLUMNS`).

        Args:
            path (str or Path): the file to write.

        Example:
            >>> compression_report(nn.Sequential(nn.Linear(4, 4))).to_csv("/tmp/r.csv")
            >>> open("/tmp/r.csv").readline().strip()
            'tensor,weights,density,bits,index_bits,dense,P,PQ,PQH,ratio'
        """
        with atomic_open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for r in [*self.rows, self.totals()]:
                writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])

    def to_markdown(self, path: str | Path | None = None) -> str:
        """The table as GitHub Markdown; written to ``path`` when given.

        Args:
            path (str or Path, optional): where to write it.

        Returns:
            The Markdown text.

        Example:
            >>> compression_report(nn.Sequential(nn.Linear(4, 4))).to_markdown()[:10]
            '| tensor |'
        """
        lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        text = "\n".join([*lines, "", self._footer()]) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def __str__(self) -> str:
        return self.to_table()


def compression_report(
    model_or_path: nn.Module | str | Path | BinaryIO | bytes, **save_kwargs: Any
) -> CompressionReport:
    r"""Report the compressed size of a model or file, per tensor and in total.

    Args:
        model_or_path (nn.Module, str, Path, binary file or bytes): a model (encoded in
            memory with ``save_kwargs``) or a compressed file.
        **save_kwargs: options of :func:`save_compressed` when given a model.

    Returns:
        A :class:`CompressionReport`; its ``file_bytes`` is the real file size.

    Raises:
        TypeError: ``model_or_path`` of the wrong type, or ``save_kwargs`` with a file.
        CompressedFileError: the file is malformed.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> from torchprune_share.fileformat import compression_report
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> r = compression_report(net)
        >>> r.file_bytes == sum(row["PQH"] for row in r.rows) + r.overhead
        True
    """
    if isinstance(model_or_path, nn.Module):
        blob = encode_model(model_or_path, **save_kwargs)
    else:
        if save_kwargs:
            raise TypeError(f"options {sorted(save_kwargs)} apply to a model, not to a file")
        blob = read_source(model_or_path)
    records, overhead = parse(blob)
    return CompressionReport([_report_row(r) for r in records], len(blob), overhead)
