"""Pure-numpy numeric codec used by the compressed model file format.

Two building blocks, both vectorised (no Python loop per value) and free of torch:

* :mod:`~torchprune_share.codec.bitpack` -- fixed-width bit packing
  (:func:`pack_bits`, :func:`unpack_bits`, :func:`packed_nbytes`).
* :mod:`~torchprune_share.codec.huffman` -- canonical, length-limited Huffman
  coding of non-negative integer streams (:func:`encode`, :func:`decode`,
  :func:`code_lengths`, :func:`encoded_size_bits`).

Every decoder raises :class:`CodecError` (a :class:`ValueError`) on malformed,
truncated or corrupt input and never any other exception type for bad bytes.

Example:
    >>> import numpy as np
    >>> from torchprune_share import codec
    >>> x = np.array([3, 3, 3, 1, 0, 3])
    >>> codec.decode(codec.encode(x)).tolist()
    [3, 3, 3, 1, 0, 3]
    >>> codec.unpack_bits(codec.pack_bits(x, 2), 2, len(x)).tolist()
    [3, 3, 3, 1, 0, 3]
"""


class CodecError(ValueError):
    """Raised when encoded data is malformed, truncated or corrupt."""


# The submodules import CodecError from this package, so it must exist first.
from .bitpack import pack_bits, packed_nbytes, unpack_bits  # noqa: E402
from .huffman import (  # noqa: E402
    DEFAULT_MAX_LEN,
    MAX_CODE_LEN,
    code_lengths,
    decode,
    encode,
    encoded_size_bits,
)

__all__ = [
    "DEFAULT_MAX_LEN",
    "MAX_CODE_LEN",
    "CodecError",
    "code_lengths",
    "decode",
    "encode",
    "encoded_size_bits",
    "pack_bits",
    "packed_nbytes",
    "unpack_bits",
]
