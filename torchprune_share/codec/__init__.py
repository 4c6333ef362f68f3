"""Pure-numpy numeric codec used by the compressed model file format.

Vectorised building blocks (no Python loop per value), free of torch:

* :mod:`~torchprune_share.codec.wire` -- varints and the bounds-checked reader that
  both the Huffman decoder and the model file's reader are built on.
* :mod:`~torchprune_share.codec.bitpack` -- fixed-width bit packing
  (:func:`pack_bits`, :func:`unpack_bits`, :func:`packed_nbytes`).
* :mod:`~torchprune_share.codec.prefix_code` -- optimal length-limited code lengths
  (:func:`code_lengths`, :func:`encoded_size_bits`).
* :mod:`~torchprune_share.codec.huffman` -- canonical Huffman coding of non-negative
  integer streams (:func:`encode`, :func:`decode`).

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
