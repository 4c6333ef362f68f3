"""The ``.tpsc`` file format: byte layout, record kinds and the tables of byte codes.

Everything a reader or writer of the format must agree on lives here; the writer
(:mod:`.writer`), the reader (:mod:`.reader`), the loader (:mod:`.loader`) and the
report (:mod:`.report`) import it. Varints and bounded reads come from
:mod:`torchprune_share.codec.wire`, shared with the Huffman codec.

Byte layout (``varint`` = unsigned LEB128 of at most 9 bytes, so values < 2**63; all
fixed-width integers and tensor bytes little-endian)::

    offset 0   4 B   magic b"TPSC"
           4   u16   format version (1)
           6   u16   flags (0)
           8   u64   payload length P
          16   u32   CRC-32 (zlib) of the payload
          20   P B   payload: varint record count, then the records, nothing after them

    record     varint name length, UTF-8 name (the state_dict key, or for a pruned or
               shared tensor its dense name such as "fc1.weight"; each name once)
               u8 kind: 0 raw, 1 pruned, 2 shared
               u8 dtype (index into DTYPES; for a shared tensor the dense dtype),
               u8 ndim, ndim x varint shape (numel = product <= 2**48)
      raw:     the tensor's bytes (numel x itemsize, C order; bool as bytes 0/1,
               bfloat16 as its 16-bit pattern)
      pruned:  varint n_kept, positions (only if n_kept < numel), then the n_kept kept
               values (dtype bytes, C order)
      shared:  u8 bits (1..16), u8 granularity, zigzag-varint channel_axis, u8 init,
               u8 method (the byte codes of :data:`torchprune_share.config.CODES`, e.g.
               granularity 0 per_tensor, 1 per_channel), varint k (centroids per
               codebook, <= 2**bits),
               u8 codebook dtype (floating), u8 index dtype (integer; holds code k, the
               pruned zero, when n_kept < numel),
               codebook bytes (rows x k, rows = shape[channel_axis] or 1),
               varint n_kept, positions (only if n_kept < numel), codes
    positions  u8 index_bits b (1..16), stream of relative indices of the kept entries
               in C order: a symbol s < 2**b - 1 skips s entries and marks the next one
               kept; s = 2**b - 1 is a filler that skips 2**b - 1 entries and marks
               nothing (Deep Compression's relative index, with its filler zero as a
               code of its own). The stream ends with a kept entry, before numel.
    codes      stream of the kept entries' codes in C order, each < k (per channel: into
               that channel's codebook); width max(1, bit_length(k - 1))
    stream     u8 coding (0 packed, 1 Huffman), varint symbol count, varint byte length,
               then the bytes: fixed-width packing at the stream's width
               (:func:`torchprune_share.codec.pack_bits`, exactly ceil(count x width / 8)
               bytes) or a canonical Huffman stream (:func:`torchprune_share.codec.encode`,
               never for an empty stream). The writer takes whichever is smaller when
               Huffman coding is on, and unless told chooses each tensor's index_bits
               as the width of the smallest positions block (the narrowest on a tie).

Adding a record kind: give it the next code after :data:`SHARED` (append to
:data:`KINDS`), write it in :mod:`.writer`, read it in :mod:`.reader` (every count
bounded by the bytes present), and add its columns in :mod:`.report`.

Example:
    >>> KINDS[SHARED], TORCH_DTYPES[2], code_width(8), packed_stream_size(10, 3)
    ('shared', torch.bfloat16, 3, 7)
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from ..codec.wire import encode_varint

__all__ = [
    "CODINGS",
    "DTYPES",
    "HUFFMAN",
    "INDEX_DTYPES",
    "KINDS",
    "MAGIC",
    "MAX_BITS",
    "MAX_NUMEL",
    "NUMPY_DTYPES",
    "PACKED",
    "PREAMBLE",
    "PRUNED",
    "RAW",
    "SHARED",
    "TORCH_DTYPES",
    "VERSION",
    "CompressedFileError",
    "code_width",
    "packed_stream_size",
]

MAGIC = b"TPSC"
VERSION = 1
PREAMBLE = struct.Struct("<4sHHQI")  # magic, version, flags, payload length, crc32
RAW, PRUNED, SHARED = 0, 1, 2
KINDS = ("raw", "pruned", "shared")  # by byte code
PACKED, HUFFMAN = 0, 1
CODINGS = ("packed", "huffman")  # by byte code
MAX_BITS = 16  # relative-index bits (sharing bits: config.MAX_BITS, checked by SharingConfig)
MAX_NUMEL = 1 << 48  # refuse shapes no machine could hold before doing any arithmetic

# The position of an entry in these tables is its code in the file: append, never reorder.
DTYPES: tuple[tuple[torch.dtype, str], ...] = (
    (torch.float32, "<f4"),
    (torch.float16, "<f2"),
    (torch.bfloat16, "<i2"),  # stored as its bit pattern
    (torch.float64, "<f8"),
    (torch.int64, "<i8"),
    (torch.int32, "<i4"),
    (torch.int16, "<i2"),
    (torch.int8, "<i1"),
    (torch.uint8, "<u1"),
    (torch.bool, "<u1"),
)
TORCH_DTYPES = tuple(t for t, _ in DTYPES)
NUMPY_DTYPES = {t: np.dtype(n) for t, n in DTYPES}
INDEX_DTYPES = tuple(t for t in TORCH_DTYPES if not t.is_floating_point and t != torch.bool)


class CompressedFileError(ValueError):
    """A compressed model file is malformed, corrupt, or does not fit the model.

    Example:
        >>> from torchprune_share.fileformat import compression_report
        >>> try:
        ...     compression_report(b"not a model file")
        ... except CompressedFileError as err:
        ...     print(err)
        file truncated: 16 bytes, the preamble alone is 20
    """


def code_width(k: int) -> int:
    """Bits per code of a codebook of ``k`` centroids (at least 1).

    Example:
        >>> [code_width(k) for k in (1, 2, 3, 16, 17)]
        [1, 1, 2, 4, 5]
    """
    return max(1, (k - 1).bit_length())


def packed_stream_size(count: int, width: int) -> int:
    """Bytes of a packed stream of ``count`` symbols of ``width`` bits, header included.

    Computed, not built: a report asks this of streams a hostile file declares.

    Example:
        >>> packed_stream_size(0, 4), packed_stream_size(1000, 16)
        (3, 2005)
    """
    nbytes = (count * width + 7) // 8
    return 1 + len(encode_varint(count)) + len(encode_varint(nbytes)) + nbytes
