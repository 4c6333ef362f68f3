"""Writing ``.tpsc`` files: one record per tensor, layout in :mod:`.spec`.

Example:
    >>> from torchprune_share import level_prune
    >>> net = nn.Sequential(nn.Linear(8, 4))
    >>> _ = level_prune(net[0], amount=0.75)
    >>> blob = encode_model(net)
    >>> blob[:4], len(blob) == save_compressed(net, "/tmp/writer-example.tpsc")
    (b'TPSC', True)
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from .. import codec
from ..atomic import atomic_write_bytes
from ..checkpoint import owned_keys
from ..codec.wire import encode_varint, zigzag_encode
from ..config import code_of
from ..names import named_tensors
from ..parametrizations import WeightSharing
from ..state import FOREIGN, MASKED, TORCH_PRUNED, TensorState
from .spec import (
    HUFFMAN,
    INDEX_DTYPES,
    MAGIC,
    MAX_BITS,
    NUMPY_DTYPES,
    PACKED,
    PREAMBLE,
    PRUNED,
    RAW,
    SHARED,
    TORCH_DTYPES,
    VERSION,
    code_width,
    packed_stream_size,
)

__all__ = [
    "best_packed_width",
    "encode_model",
    "gap_symbols",
    "packed_positions_size",
    "positions_block",
    "record_header",
    "save_compressed",
    "stream_bytes",
]


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().astype(NUMPY_DTYPES[t.dtype], copy=False).tobytes()


def gap_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    """Relative-index symbols (fillers included) of sorted kept positions.

    Example:
        >>> gap_symbols(np.array([0, 9]), 2).tolist()  # a gap of 8: two fillers of 3, then 2
        [0, 3, 3, 2]
    """
    cap = (1 << bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // cap
    symbols = np.full(len(gaps) + int(fillers.sum()), cap, dtype=np.int64)
    symbols[np.cumsum(fillers + 1) - 1] = gaps - fillers * cap  # each after its fillers
    return symbols


def packed_positions_size(positions: np.ndarray, bits: int) -> int:
    """Bytes of the positions block of ``positions`` packed at ``bits``, not building it.

    Example:
        >>> p = np.array([0, 9])
        >>> packed_positions_size(p, 2) == len(positions_block(p, False, 2))
        True
    """
    gaps = np.diff(positions, prepend=-1) - 1
    count = len(gaps) + int((gaps // ((1 << bits) - 1)).sum())
    return 1 + packed_stream_size(count, bits)


def stream_bytes(coding: int, count: int, data: bytes) -> bytes:
    """A stream: coding byte, symbol count, byte length, then ``data``.

    Example:
        >>> stream_bytes(PACKED, 3, b"\\xd1\\x01")
        b'\\x00\\x03\\x02\\xd1\\x01'
    """
    return bytes([coding]) + encode_varint(count) + encode_varint(len(data)) + data


def _stream(symbols: np.ndarray, width: int, huffman: bool) -> bytes:
    data, coding = codec.pack_bits(symbols, width), PACKED
    if huffman and len(symbols):
        coded = codec.encode(symbols)
        if len(coded) < len(data):
            data, coding = coded, HUFFMAN
    return stream_bytes(coding, len(symbols), data)


def _candidate_widths(positions: np.ndarray) -> range:
    # Widths past the one that needs no filler only make the packed stream longer.
    max_gap = int((np.diff(positions, prepend=-1) - 1).max()) if len(positions) else 0
    return range(1, min(MAX_BITS, (max_gap + 1).bit_length()) + 1)


def best_packed_width(positions: np.ndarray) -> int:
    """The index width whose packed positions block is smallest (the narrowest on a tie).

    Example:
        >>> best_packed_width(np.arange(0, 100, 10))  # gaps of 9
        4
    """
    return min(_candidate_widths(positions), key=lambda b: packed_positions_size(positions, b))


def positions_block(positions: np.ndarray, huffman: bool, index_bits: int | None) -> bytes:
    """The positions block of sorted flat kept positions, at the given or best width.

    With ``index_bits=None`` every width is tried and the smallest block wins (the
    narrowest on a tie); without Huffman coding the sizes are computed, not built.

    Example:
        >>> positions_block(np.array([1, 2]), False, None)  # width 1: a filler, 0, 0
        b'\\x01\\x00\\x03\\x01\\x01'
    """
    if index_bits is not None:
        widths = [index_bits]
    elif huffman:
        widths = _candidate_widths(positions)
    else:
        widths = [best_packed_width(positions)]
    blocks = (bytes([b]) + _stream(gap_symbols(positions, b), b, huffman) for b in widths)
    return min(blocks, key=len)


def record_header(name: str, kind: int, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    """A record's name, kind, dtype and shape.

    Example:
        >>> record_header("w", RAW, torch.float32, (2, 3))
        b'\\x01w\\x00\\x00\\x02\\x02\\x03'
    """
    raw = name.encode("utf-8")
    dims = b"".join(encode_varint(s) for s in shape)
    head = bytes([kind, TORCH_DTYPES.index(dtype), len(shape)])
    return encode_varint(len(raw)) + raw + head + dims


def _kept_part(keep: np.ndarray, huffman: bool, index_bits: int | None) -> bytes:
    positions = np.flatnonzero(keep)
    block = positions_block(positions, huffman, index_bits) if len(positions) < keep.size else b""
    return encode_varint(len(positions)) + block


def _encode_raw(name: str, t: Tensor) -> bytes:
    return record_header(name, RAW, t.dtype, tuple(t.shape)) + _tensor_bytes(t)


def _encode_pruned(
    name: str, value: Tensor, mask: Tensor, huffman: bool, index_bits: int | None
) -> bytes:
    keep = mask.detach().cpu().reshape(-1)
    return (
        record_header(name, PRUNED, value.dtype, tuple(value.shape))
        + _kept_part(keep.numpy(), huffman, index_bits)
        + _tensor_bytes(value.detach().cpu().reshape(-1)[keep])
    )


def _encode_shared(
    name: str,
    ws: WeightSharing,
    codebook: Tensor,
    huffman: bool,
    index_bits: int | None,
    codebook_dtype: torch.dtype | None,
) -> bytes:
    keep = ws.kept().cpu().reshape(-1).numpy()
    codes = ws.index.detach().cpu().reshape(-1).numpy()[keep]
    config, k = ws.config, ws.num_centroids  # the config checked its settings when built
    if (
        codebook.shape[-1] != k
        or ws.index.dtype not in INDEX_DTYPES
        or (len(codes) and not 0 <= codes.min() <= codes.max() < k)
    ):
        raise ValueError(f"tensor {name!r}: inconsistent weight sharing ({ws.extra_repr()})")
    settings = bytes([config.bits, code_of("granularity", config.granularity)])
    settings += encode_varint(zigzag_encode(config.channel_axis))
    settings += bytes([code_of("init", config.init), code_of("method", config.method)])
    dtypes = (codebook_dtype or codebook.dtype, ws.index.dtype)
    return b"".join(
        [
            record_header(name, SHARED, codebook.dtype, tuple(ws.index.shape)),
            settings,
            encode_varint(k),
            bytes(TORCH_DTYPES.index(d) for d in dtypes),
            _tensor_bytes(codebook.detach().to(dtypes[0])),
            _kept_part(keep, huffman, index_bits),
            _stream(codes, code_width(k), huffman),
        ]
    )


def _savable_states(model: nn.Module) -> dict[str, TensorState]:
    """The states of the pruned and shared tensors; refuses what a file could store but
    the loader could not restore."""
    states = {}
    for q, module, name in named_tensors(model):
        state = TensorState.of(module, name)
        if state.kind == TORCH_PRUNED:
            raise ValueError(
                f"tensor {q!r} is pruned by a torch.nn.utils.prune hook; adopt it with "
                "torchprune_share.level_prune(module, name, amount=0) before saving"
            )
        # One parametrization of this package's, nothing stacked on it.
        if state.kind == FOREIGN or (state.compressed and len(module.parametrizations[name]) != 1):
            raise ValueError(
                f"tensor {q!r} carries a parametrization other than this package's "
                "one PruningMask or WeightSharing; it cannot be stored"
            )
        if state.compressed:
            states[q] = state
    return states


def _records(
    model: nn.Module, huffman: bool, index_bits: int | None, codebook_dtype: torch.dtype | None
) -> Iterator[bytes]:
    """One encoded record per tensor, in state_dict order."""
    states = _savable_states(model)
    owner, done = owned_keys(model), set()
    for key, t in model.state_dict().items():
        q = owner.get(key)
        if q is None:
            if not isinstance(t, Tensor) or t.dtype not in TORCH_DTYPES:
                what = t.dtype if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"state_dict entry {key!r} ({what}) cannot be stored")
            yield _encode_raw(key, t)
        elif q not in done:
            done.add(q)
            state = states[q]
            if state.kind == MASKED:
                yield _encode_pruned(q, state.parameter(), state.reparam.mask, huffman, index_bits)
            else:
                yield _encode_shared(
                    q, state.reparam, state.parameter(), huffman, index_bits, codebook_dtype
                )


def _check_options(
    model: nn.Module, huffman: bool, index_bits: int | None, codebook_dtype: torch.dtype | None
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if index_bits is not None:
        if isinstance(index_bits, bool) or not isinstance(index_bits, int):
            raise TypeError(f"index_bits must be None or an int, got {type(index_bits).__name__}")
        if not 1 <= index_bits <= MAX_BITS:
            raise ValueError(f"index_bits must be None or an int in [1, 16], got {index_bits}")
    if not isinstance(huffman, bool):
        raise TypeError(f"huffman must be a bool, got {type(huffman).__name__}")
    if codebook_dtype is not None and not isinstance(codebook_dtype, torch.dtype):
        raise TypeError(
            f"codebook_dtype must be None or a torch.dtype, got {type(codebook_dtype).__name__}"
        )
    if codebook_dtype not in (None, torch.float32, torch.float16):
        raise ValueError(
            f"codebook_dtype must be None, torch.float32 or torch.float16, got {codebook_dtype}"
        )


def encode_model(
    model: nn.Module,
    *,
    index_bits: int | None = None,
    huffman: bool = True,
    codebook_dtype: torch.dtype | None = None,
) -> bytes:
    """The bytes :func:`save_compressed` writes (same arguments), in memory.

    Example:
        >>> encode_model(nn.Sequential(nn.Linear(2, 2)))[:4]
        b'TPSC'
    """
    _check_options(model, huffman, index_bits, codebook_dtype)
    records = list(_records(model, huffman, index_bits, codebook_dtype))
    payload = encode_varint(len(records)) + b"".join(records)
    return PREAMBLE.pack(MAGIC, VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def save_compressed(
    model: nn.Module,
    path: str | Path | BinaryIO,
    *,
    index_bits: int | None = None,
    huffman: bool = True,
    codebook_dtype: torch.dtype | None = None,
) -> int:
    r"""Write ``model`` to a compressed file (Deep Compression's storage format).

    Pruned tensors store the positions of their kept entries as relative indices of
    ``index_bits`` bits (chosen per tensor to minimise the size when ``None``) and their
    kept values; shared tensors store their codebook and one code per kept entry; with
    ``huffman=True`` the index and code streams are Huffman coded where that is smaller.
    Everything else in the ``state_dict`` (biases, norms, buffers) is stored as is.

    A path is written crash-safely (:func:`torchprune_share.atomic.atomic_open`): if the
    process dies or the disk fills up mid-write, a file already at ``path`` is left
    whole. A file object is written to as it is.

    Args:
        model (nn.Module): the (pruned and/or shared) model.
        path (str, Path or binary file): where to write.
        index_bits (int, optional): fixed relative-index width in [1, 16]; default chooses
            per tensor.
        huffman (bool): Huffman-code the index and code streams. Default: True.
        codebook_dtype (torch.dtype, optional): ``torch.float16`` halves the codebooks'
            size (lossless only if the codebooks hold float16 values); default keeps
            their dtype, so a reload is bitwise exact.

    Returns:
        The number of bytes written.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a value out of range, a tensor pruned with ``torch.nn.utils.prune``
            hooks or carrying a foreign parametrization, or a state entry that is not a
            tensor of a supported dtype.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> from torchprune_share.fileformat import save_compressed
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> n = save_compressed(net, "/tmp/net.tpsc")
        >>> n < 64 * 32 * 4 / 10
        True
    """
    writable = isinstance(path, io.IOBase) or callable(getattr(path, "write", None))
    if not writable and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, Path or binary file, got {type(path).__name__}")
    blob = encode_model(
        model, index_bits=index_bits, huffman=huffman, codebook_dtype=codebook_dtype
    )
    if writable:
        path.write(blob)  # type: ignore[union-attr]
    else:
        atomic_write_bytes(path, blob)
    return len(blob)
