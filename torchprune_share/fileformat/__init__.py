"""The compressed model file: sparse relative indices, packed codes, Huffman coding.

A ``.tpsc`` file is a compact encoding of a compressed model's ``state_dict`` that needs
no pickle to read. Its size in bytes is the model's real compressed size.

One module per concept:

* :mod:`.spec`: the byte layout, record kinds, byte-code tables and
  :class:`CompressedFileError`;
* :mod:`.writer`: :func:`save_compressed` (crash-safe) and the record encoders;
* :mod:`.reader`: the bounded parser every reader goes through;
* :mod:`.loader`: :func:`load_compressed`, into a freshly built model;
* :mod:`.report`: :func:`compression_report` and :class:`CompressionReport`.

The sharing settings and their byte codes belong to :mod:`torchprune_share.config`, the
``state_dict`` keys of a compressed tensor to :mod:`torchprune_share.names` and
:func:`torchprune_share.checkpoint.owned_keys`.

Varints and bounded reads come from :mod:`torchprune_share.codec.wire`, shared with the
Huffman codec.

A pruned tensor's pruned entries are not stored: after loading they are zero in the
parametrization's ``original`` (the tensor itself is bitwise the same). Loading never
executes code; every malformed input raises :class:`CompressedFileError` naming the
problem and the tensor, and leaves the model untouched.

Example:
    >>> from torchprune_share import level_prune
    >>> net = nn.Sequential(nn.Linear(16, 8))
    >>> _ = level_prune(net[0], amount=0.5)
    >>> n = save_compressed(net, "/tmp/fileformat-example.tpsc")
    >>> fresh = load_compressed(nn.Sequential(nn.Linear(16, 8)), "/tmp/fileformat-example.tpsc")
    >>> torch.equal(fresh[0].weight, net[0].weight), compression_report(net).file_bytes == n
    (True, True)
"""

# 0.1.0's names for the accepted values; their byte codes are config.CODES.
from ..config import INITS, METHODS
from .loader import load_compressed
from .report import COLUMNS, TABLE_HEAD, CompressionReport, compression_report
from .spec import (
    CODINGS,
    DTYPES,
    HUFFMAN,
    INDEX_DTYPES,
    KINDS,
    MAGIC,
    MAX_BITS,
    MAX_NUMEL,
    NUMPY_DTYPES,
    PACKED,
    PREAMBLE,
    PRUNED,
    RAW,
    SHARED,
    TORCH_DTYPES,
    VERSION,
    CompressedFileError,
)
from .writer import save_compressed

__all__ = [
    "CODINGS",
    "COLUMNS",
    "DTYPES",
    "HUFFMAN",
    "INDEX_DTYPES",
    "INITS",
    "KINDS",
    "MAGIC",
    "MAX_BITS",
    "MAX_NUMEL",
    "METHODS",
    "NUMPY_DTYPES",
    "PACKED",
    "PREAMBLE",
    "PRUNED",
    "RAW",
    "SHARED",
    "TABLE_HEAD",
    "TORCH_DTYPES",
    "VERSION",
    "CompressedFileError",
    "CompressionReport",
    "compression_report",
    "load_compressed",
    "save_compressed",
]
