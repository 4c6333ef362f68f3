"""One error convention for the file format, the codec and the atomic writes.

TypeError for an argument of the wrong type, ValueError for a wrong value, the
library's own classes (CompressedFileError, CodecError; both ValueErrors) for bad
bytes. Every message names the argument.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from torchprune_share import codec, level_prune
from torchprune_share.atomic import (
    atomic_open,
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_text,
)
from torchprune_share.codec import CodecError
from torchprune_share.codec.wire import BoundedReader, as_uint8, encode_varint
from torchprune_share.fileformat import (
    CompressedFileError,
    compression_report,
    load_compressed,
    save_compressed,
)


def net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    level_prune(model[0], amount=0.5)
    return model


def _open(*args, **kwargs):
    with atomic_open(*args, **kwargs):
        pass


BLOB = io.BytesIO()
save_compressed(net(), BLOB)
GOOD = BLOB.getvalue()

CASES = [
    # codec: bit packing
    ("pack_bits bits str", lambda: codec.pack_bits(np.array([1]), "3"), TypeError, "bits"),
    ("pack_bits bits bool", lambda: codec.pack_bits(np.array([1]), True), TypeError, "bits"),
    ("pack_bits bits 0", lambda: codec.pack_bits(np.array([1]), 0), ValueError, "bits"),
    ("pack_bits float", lambda: codec.pack_bits(np.array([1.0]), 3), TypeError, "values"),
    ("pack_bits too big", lambda: codec.pack_bits(np.array([8]), 3), ValueError, "values"),
    ("unpack_bits count str", lambda: codec.unpack_bits(b"", 3, "1"), TypeError, "count"),
    ("unpack_bits count -1", lambda: codec.unpack_bits(b"", 3, -1), ValueError, "count"),
    ("unpack_bits data str", lambda: codec.unpack_bits("ab", 3, 1), TypeError, "data"),
    ("unpack_bits short", lambda: codec.unpack_bits(b"", 3, 1), CodecError, "truncated"),
    ("packed_nbytes float", lambda: codec.packed_nbytes(1.0, 3), TypeError, "count"),
    # codec: Huffman
    ("encode float", lambda: codec.encode(np.array([0.5])), TypeError, "symbols"),
    ("encode negative", lambda: codec.encode(np.array([-1])), ValueError, "symbols"),
    ("encode max_len str", lambda: codec.encode(np.array([1]), max_len="8"), TypeError, "max_len"),
    ("encode max_len 0", lambda: codec.encode(np.array([1]), max_len=0), ValueError, "max_len"),
    (
        "encode chunk float",
        lambda: codec.encode(np.array([1]), chunk_size=16.0),
        TypeError,
        "chunk",
    ),
    ("encode chunk 100", lambda: codec.encode(np.array([1]), chunk_size=100), ValueError, "chunk"),
    ("decode str", lambda: codec.decode("HF"), TypeError, "data"),
    ("decode int array", lambda: codec.decode(np.zeros(8, np.int32)), TypeError, "data"),
    ("decode garbage", lambda: codec.decode(b"HF\x01garbage"), CodecError, "Huffman"),
    ("code_lengths str", lambda: codec.code_lengths(np.array(["a"])), TypeError, "frequencies"),
    ("code_lengths 2-D", lambda: codec.code_lengths(np.ones((2, 2))), ValueError, "frequencies"),
    ("code_lengths nan", lambda: codec.code_lengths(np.array([np.nan])), ValueError, "finite"),
    ("size_bits float", lambda: codec.encoded_size_bits(np.array([0.5])), TypeError, "symbols"),
    # wire
    ("varint float", lambda: encode_varint(1.0), TypeError, "value"),
    ("varint 2**63", lambda: encode_varint(2**63), ValueError, "value"),
    ("as_uint8 str", lambda: as_uint8("ab"), TypeError, "data"),
    ("reader str", lambda: BoundedReader("ab"), TypeError, "data"),
    # file format: saving
    ("save model", lambda: save_compressed("model", io.BytesIO()), TypeError, "model"),
    ("save path", lambda: save_compressed(net(), 3), TypeError, "path"),
    (
        "save index_bits str",
        lambda: save_compressed(net(), io.BytesIO(), index_bits="3"),
        TypeError,
        "index_bits",
    ),
    (
        "save index_bits 17",
        lambda: save_compressed(net(), io.BytesIO(), index_bits=17),
        ValueError,
        "index_bits",
    ),
    ("save huffman", lambda: save_compressed(net(), io.BytesIO(), huffman=1), TypeError, "huffman"),
    (
        "save codebook str",
        lambda: save_compressed(net(), io.BytesIO(), codebook_dtype="half"),
        TypeError,
        "codebook_dtype",
    ),
    (
        "save codebook f64",
        lambda: save_compressed(net(), io.BytesIO(), codebook_dtype=torch.float64),
        ValueError,
        "codebook_dtype",
    ),
    # file format: loading
    ("load model", lambda: load_compressed("model", GOOD), TypeError, "model"),
    ("load source", lambda: load_compressed(net(), 3), TypeError, "path"),
    ("load text file", lambda: load_compressed(net(), io.StringIO("x")), TypeError, "binary"),
    (
        "load bake",
        lambda: load_compressed(nn.Sequential(nn.Linear(8, 4)), GOOD, bake=1),
        TypeError,
        "bake",
    ),
    ("load garbage", lambda: load_compressed(net(), b"garbage"), CompressedFileError, "truncated"),
    (
        "load other model",
        lambda: load_compressed(nn.Linear(3, 3), GOOD),
        CompressedFileError,
        "no such tensor",
    ),
    # file format: report
    ("report source", lambda: compression_report(3), TypeError, "path"),
    (
        "report options for a file",
        lambda: compression_report(GOOD, huffman=False),
        TypeError,
        "options",
    ),
    (
        "report bad option",
        lambda: compression_report(net(), index_bits="3"),
        TypeError,
        "index_bits",
    ),
    ("report garbage", lambda: compression_report(GOOD[:-1]), CompressedFileError, "truncated"),
    ("report csv path", lambda: compression_report(GOOD).to_csv(3), TypeError, "path"),
    ("report md path", lambda: compression_report(GOOD).to_markdown(3.5), TypeError, "path"),
    # atomic writes
    ("atomic path", lambda: atomic_write_bytes(None, b""), TypeError, "path"),
    ("atomic data", lambda: atomic_write_bytes("/tmp/x", "str"), TypeError, "data"),
    ("atomic text", lambda: atomic_write_text("/tmp/x", b"b"), TypeError, "text"),
    ("atomic mode", lambda: _open("/tmp/x", "a"), ValueError, "mode"),
    ("atomic mode type", lambda: _open("/tmp/x", 2), TypeError, "mode"),
    ("atomic figure", lambda: atomic_save_figure(None, "/tmp/x.png"), TypeError, "figure"),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_error_convention(call, error, match):
    with pytest.raises(error, match=match) as info:
        call()
    # The library's classes are ValueErrors, never TypeErrors: one except clause each.
    if error is TypeError:
        assert not isinstance(info.value, ValueError)
    else:
        assert isinstance(info.value, ValueError)


def test_model_untouched_on_every_load_error():
    model = nn.Sequential(nn.Linear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (GOOD[:-1], GOOD[:20] + b"\x00" + GOOD[21:], 3):
        with pytest.raises((CompressedFileError, TypeError)):
            load_compressed(model, bad)
        assert list(model.state_dict()) == list(before)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
