"""A ``.tpsc`` file written by torchprune_share 0.1.0 keeps loading, bitwise.

The files under ``tests/fixtures/`` were written once, by the code of commit
``db537dfb`` (before the file format became a package), with
``python -m tests.test_fileformat_fixture --write``. They are never regenerated: a
failure here means the reader or the writer changed the format.

* ``v1_model.tpsc``: default options (Huffman on, index widths chosen per tensor);
* ``v1_model_packed.tpsc``: ``huffman=False``;
* ``v1_model_fixed.tpsc``: ``index_bits=3, codebook_dtype=torch.float16``;
* ``v1_expected.pt``: tensors only (``torch.load(..., weights_only=True)``): the fixed
  input ``x`` and the outputs of the saved model on it for each of the three files.

The model covers every record kind and option the writer knows: raw tensors of several
dtypes (float32, bfloat16, int64, bool), a pruned tensor, per-tensor and per-channel
sharing (channel axis 0 and -1), pruned + shared tensors, the ``density`` and
``random`` inits and the ``optimal`` method.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchprune_share import level_prune, register_weight_sharing
from torchprune_share.fileformat import compression_report, load_compressed, save_compressed

FIXTURES = Path(__file__).parent / "fixtures"
FILES = {
    "default": ("v1_model.tpsc", {}),
    "packed": ("v1_model_packed.tpsc", {"huffman": False}),
    "fixed": ("v1_model_fixed.tpsc", {"index_bits": 3, "codebook_dtype": torch.float16}),
}


def build_model() -> nn.Sequential:
    """The fixture's architecture, freshly initialised (weights come from the file)."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    model.register_buffer("flags", torch.zeros(5, dtype=torch.bool))
    model.register_buffer("scale", torch.zeros(3, dtype=torch.bfloat16))
    return model.eval()


def compressed_model() -> nn.Sequential:
    """The saved model: every kind of record, fixed seed."""
    torch.manual_seed(2024)
    model = build_model().train()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        model(torch.randn(16, 3, 8, 8))
    model.eval()
    model.flags.copy_(torch.tensor([True, False, True, True, False]))
    model.scale.copy_(torch.tensor([0.5, -1.25, 3.0], dtype=torch.bfloat16))
    gen = torch.Generator().manual_seed(7)
    register_weight_sharing(model[0], bits=3, granularity="per_channel", channel_axis=0)
    register_weight_sharing(level_prune(model[4], amount=0.85), bits=4, init="density")
    level_prune(model[6], amount=0.6)
    register_weight_sharing(
        level_prune(model[8], amount=0.3),
        bits=2,
        granularity="per_channel",
        channel_axis=-1,
        init="random",
        generator=gen,
    )
    register_weight_sharing(model[10], bits=2, method="optimal")
    return model


def expected() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "v1_expected.pt", weights_only=True)


@pytest.mark.parametrize("which", sorted(FILES))
def test_fixture_loads_bitwise(which):
    name, _ = FILES[which]
    want = expected()
    model = load_compressed(build_model(), FIXTURES / name)
    with torch.no_grad():
        out = model(want["x"])
    assert out.dtype == want[which].dtype
    # The weights load bitwise (test_fixture_rewrites_to_the_same_bytes); the forward's
    # float sums are rounded differently on other CPUs (AVX2 and AVX-512 kernels differ
    # in the last bit), so the outputs made on 0.1.0's machine match to rounding.
    torch.testing.assert_close(out, want[which], rtol=1e-5, atol=1e-6)
    assert model.flags.tolist() == [True, False, True, True, False]
    assert model.scale.tolist() == [0.5, -1.25, 3.0]
    baked = load_compressed(build_model(), FIXTURES / name, bake=True)
    with torch.no_grad():
        assert torch.equal(baked(want["x"]), out)


@pytest.mark.parametrize("which", sorted(FILES))
def test_fixture_rewrites_to_the_same_bytes(which, tmp_path):
    """Loading the 0.1.0 file and saving it with the same options gives its bytes back."""
    name, options = FILES[which]
    blob = (FIXTURES / name).read_bytes()
    model = load_compressed(build_model(), blob)
    assert save_compressed(model, tmp_path / name, **options) == len(blob)
    assert (tmp_path / name).read_bytes() == blob


@pytest.mark.parametrize("which", sorted(FILES))
def test_fixture_model_saves_to_the_same_bytes(which, tmp_path):
    """The whole pipeline (pruning, k-means, writer) still makes 0.1.0's bytes."""
    name, options = FILES[which]
    model = compressed_model()
    # BatchNorm's running mean comes from a float forward, whose last bit depends on the
    # CPU's kernels (AVX2 or AVX-512); it is no part of the pipeline under test, so it is
    # taken from the file (on 0.1.0's machine it was already equal).
    saved = load_compressed(build_model(), FIXTURES / name)
    with torch.no_grad():
        model[1].running_mean.copy_(saved[1].running_mean)
    save_compressed(model, tmp_path / name, **options)
    assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes()


def test_fixture_report_totals():
    report = compression_report(FIXTURES / "v1_model.tpsc")
    assert report.file_bytes == (FIXTURES / "v1_model.tpsc").stat().st_size
    assert report.file_bytes == report.totals()["PQH"] + report.overhead
    rows = {r["tensor"]: r for r in report.rows}
    assert rows["0.weight"]["bits"] == 3 and rows["6.weight"]["bits"] is None
    assert rows["4.weight"]["density"] == pytest.approx(0.15, abs=1 / 18432)
    assert rows["6.weight"]["P"] == rows["6.weight"]["PQ"]


def test_byte_code_tables_are_append_only():
    """A file's byte codes index these tables: 0.1.0's entries keep their positions, and
    every setting the library can produce has a code."""
    from torchprune_share import kmeans
    from torchprune_share.config import CODES, GRANULARITIES, code_of
    from torchprune_share.fileformat import spec

    assert [code_of("init", v) for v in ("linear", "density", "random", "kmeans++")] == [0, 1, 2, 3]
    assert [code_of("method", v) for v in ("lloyd", "optimal", "sklearn")] == [0, 1, 2]
    assert [code_of("granularity", v) for v in ("per_tensor", "per_channel")] == [0, 1]
    assert spec.KINDS[:3] == ("raw", "pruned", "shared") and spec.CODINGS == ("packed", "huffman")
    assert [str(t).removeprefix("torch.") for t in spec.TORCH_DTYPES[:10]] == [
        *("float32", "float16", "bfloat16", "float64", "int64"),
        *("int32", "int16", "int8", "uint8", "bool"),
    ]
    assert set(kmeans.INITS) <= set(CODES["init"])
    assert set(kmeans.METHODS) <= set(CODES["method"])
    assert set(GRANULARITIES) <= set(CODES["granularity"])
    assert not any(hasattr(spec, n) for n in ("INITS", "METHODS", "GRANULARITIES"))  # one owner


def write_fixtures() -> None:
    """Write the fixture files (done once, with 0.1.0's code; never rerun)."""
    FIXTURES.mkdir(exist_ok=True)
    torch.manual_seed(99)
    outputs = {"x": torch.randn(4, 3, 8, 8)}
    for which, (name, options) in FILES.items():
        saved = compressed_model()
        save_compressed(saved, FIXTURES / name, **options)
        loaded = load_compressed(build_model(), FIXTURES / name)
        with torch.no_grad():
            outputs[which] = loaded(outputs["x"])
            if "codebook_dtype" not in options:  # lossless: the saved model's outputs
                assert torch.equal(saved(outputs["x"]), outputs[which])
    torch.save(outputs, FIXTURES / "v1_expected.pt")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_fileformat_fixture --write")
    write_fixtures()
