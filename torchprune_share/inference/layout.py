"""The compressed sparse-row layout the inference kernels read.

A weight of shape ``(rows, cols)`` (a convolution's is flattened to
``(out_channels, in_channels * kernel)``) with ``nnz`` kept entries is held as:

* ``rowptr``: ``rows + 1`` offsets, ``int32`` (``int64`` past 2**31 entries);
* ``cols``: the column of each kept entry, ``uint16`` for up to 65,536 columns, else
  ``int32``;
* ``payload``: the weight source of each kept entry: codes of at most 4 bits packed two
  per byte (entry ``i`` in byte ``i // 2``, low nibble first), wider codes as ``uint8`` /
  ``uint16``, or ``float32`` values when there is no codebook;
* ``lut``: the codebook, flat ``float32``; row ``r`` reads ``lut[r * stride + code]``
  (``stride`` 0 per tensor, ``k`` per output row).

At 90 % sparsity and 4 bits that is about 2.5 bytes per kept weight (2 for the column,
0.5 for the code), 1/16 of dense ``float32`` plus the row pointers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Layout", "build_layout", "pack_nibbles", "unpack_nibbles"]

MAX_UINT16_COLS = 2**16
CHUNK = 1 << 20


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pack codes in ``0..15`` two per byte, low nibble first.

    Args:
        codes (np.ndarray): 1-D integer codes, each at most 15.

    Returns:
        ``uint8`` array of ``ceil(n / 2)`` bytes.

    Example:
        >>> pack_nibbles(np.array([1, 2, 15])).tolist()
        [33, 15]
    """
    c = np.asarray(codes).astype(np.uint8)
    out = c[0::2].copy()
    out[: c.size // 2] |= c[1::2] << 4
    return out


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: the first ``count`` codes as ``uint8``.

    Example:
        >>> unpack_nibbles(np.array([33, 15], dtype=np.uint8), 3).tolist()
        [1, 2, 15]
    """
    p = np.asarray(packed, dtype=np.uint8)
    return np.stack([p & 15, p >> 4], axis=1).reshape(-1)[:count]


@dataclass
class Layout:
    """The arrays of one compressed weight (see the module docstring).

    Attributes:
        rows (int): output features.
        cols_total (int): input features (flattened for a convolution).
        rowptr, cols, payload, lut (np.ndarray): the layout arrays.
        stride (int): codebook row stride (0 per tensor, ``k`` per output row).
        decoder (str): ``"nibble"``, ``"code"`` or ``"value"``.
    """

    rows: int
    cols_total: int
    rowptr: np.ndarray
    cols: np.ndarray
    payload: np.ndarray
    lut: np.ndarray
    stride: int
    decoder: str

    @property
    def nnz(self) -> int:
        return int(self.rowptr[-1])

    def values(self) -> np.ndarray:
        """The ``float32`` value of every kept entry, in layout order."""
        if self.decoder == "value":
            return self.payload.astype(np.float32, copy=False)
        codes = self.payload
        if self.decoder == "nibble":
            codes = unpack_nibbles(codes, self.nnz)
        codes = codes.astype(np.int64)
        if self.stride:
            row_of = np.repeat(np.arange(self.rows, dtype=np.int64), np.diff(self.rowptr))
            codes = codes + row_of * self.stride
        return self.lut[codes]


def _positions(kept: np.ndarray | Tensor, rows: int, cols: int) -> np.ndarray:
    if isinstance(kept, Tensor):
        kept = kept.detach().cpu().numpy()
    if not isinstance(kept, np.ndarray):
        raise TypeError(f"kept must be a numpy array or tensor, got {type(kept).__name__}")
    if kept.dtype == np.bool_:
        if kept.size != rows * cols:
            raise ValueError(
                f"kept: a keep bitmap must have out_features * in_features = {rows * cols} "
                f"entries, got {kept.size}"
            )
        return np.flatnonzero(kept.reshape(-1)).astype(np.int64)
    if not np.issubdtype(kept.dtype, np.integer) or kept.ndim != 1:
        raise TypeError(
            f"kept must be a bool bitmap or 1-D integer positions, got {kept.dtype} {kept.shape}"
        )
    pos = kept.astype(np.int64, copy=False)
    if pos.size and (pos[0] < 0 or pos[-1] >= rows * cols or np.any(np.diff(pos) <= 0)):
        raise ValueError(
            f"kept: positions must be strictly increasing row-major indices in "
            f"[0, {rows * cols}), got range [{int(pos.min())}, {int(pos.max())}]"
        )
    return pos


def _codes_payload(codes: np.ndarray, codebook: Tensor, rows: int, nnz: int):
    if isinstance(codes, Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer) or codes.shape != (nnz,):
        raise ValueError(
            f"codes must be {nnz} integer codes (one per kept entry), got {codes.dtype} "
            f"{codes.shape}"
        )
    if not isinstance(codebook, Tensor) or not codebook.is_floating_point():
        raise TypeError("codebook must be a floating-point tensor of shape (k,) or (C, k)")
    cb = codebook.detach().cpu().to(torch.float32)
    if cb.dim() == 1:
        stride = 0
    elif cb.dim() == 2 and cb.shape[0] == rows:
        stride = int(cb.shape[1])
    else:
        raise ValueError(
            f"codebook must have shape (k,) or (out_features={rows}, k), got {tuple(cb.shape)}"
        )
    k = int(cb.shape[-1])
    if nnz and (int(codes.min()) < 0 or int(codes.max()) >= k):
        raise ValueError(f"codes must lie in [0, {k}) for a codebook of {k} entries")
    if k <= 16:
        payload, decoder = pack_nibbles(codes), "nibble"
    elif k <= 256:
        payload, decoder = codes.astype(np.uint8), "code"
    else:
        payload, decoder = codes.astype(np.uint16 if k <= 2**16 else np.int32), "code"
    return payload, np.ascontiguousarray(cb.reshape(-1).numpy()), stride, decoder


def build_layout(
    out_features: int,
    in_features: int,
    kept: np.ndarray | Tensor,
    codes: np.ndarray | None = None,
    codebook: Tensor | None = None,
    values: np.ndarray | Tensor | None = None,
) -> Layout:
    """Build the layout from a weight's natural parts, without a dense weight.

    Args:
        out_features (int): rows of the weight.
        in_features (int): columns (``in_channels * prod(kernel)`` for a convolution).
        kept: the kept entries, as 1-D strictly increasing row-major positions (``int64``)
            or a ``bool`` keep bitmap of ``out_features * in_features`` entries.
        codes (np.ndarray, optional): one integer code per kept entry (with ``codebook``).
        codebook (Tensor, optional): ``(k,)`` or ``(out_features, k)`` centroids.
        values (optional): one float per kept entry, for a weight without codebook.

    Returns:
        The :class:`Layout`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: the parts do not fit together (counts, ranges, shapes).

    Example:
        >>> lay = build_layout(2, 3, np.array([0, 2, 4]), np.array([0, 1, 1]), torch.tensor([-1.0, 1.0]))
        >>> lay.rowptr.tolist(), lay.cols.tolist(), lay.decoder, lay.values().tolist()
        ([0, 2, 3], [0, 2, 1], 'nibble', [-1.0, 1.0, 1.0])
    """
    for name, v in (("out_features", out_features), ("in_features", in_features)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    rows, ncols = int(out_features), int(in_features)
    pos = _positions(kept, rows, ncols)
    nnz = pos.size
    # Row boundaries by binary search and columns chunk by chunk: no int64 temporary of
    # nnz entries beyond the positions themselves (the file route builds from those).
    rowptr = np.searchsorted(pos, np.arange(rows + 1, dtype=np.int64) * ncols)
    if nnz < 2**31:
        rowptr = rowptr.astype(np.int32)
    cols = np.empty(nnz, np.uint16 if ncols <= MAX_UINT16_COLS else np.int32)
    for start in range(0, nnz, CHUNK):
        cols[start : start + CHUNK] = pos[start : start + CHUNK] % ncols
    if (codes is None) == (values is None):
        raise ValueError("pass either codes with a codebook, or values (exactly one of them)")
    if values is not None:
        if isinstance(values, Tensor):
            values = values.detach().cpu().to(torch.float32).numpy()
        vals = np.ascontiguousarray(values, dtype=np.float32)
        if vals.shape != (nnz,):
            raise ValueError(
                f"values must hold {nnz} floats (one per kept entry), got {vals.shape}"
            )
        return Layout(rows, ncols, rowptr, cols, vals, np.zeros(0, np.float32), 0, "value")
    if codebook is None:
        raise ValueError("codes need a codebook")
    payload, lut, stride, decoder = _codes_payload(codes, codebook, rows, nnz)
    return Layout(rows, ncols, rowptr, cols, payload, lut, stride, decoder)
