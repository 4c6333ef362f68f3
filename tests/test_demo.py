"""The demo application apart from the library: the one-way import rule, the old import
paths of 0.1.0, and the pipeline's fixed-choice mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchprune_share
from torchprune_share import data, models
from torchprune_share.demo import DemoConfig, run_demo
from torchprune_share.demo import data as demo_data
from torchprune_share.demo import models as demo_models

# Importing any of these is asking for the demo: the package itself, the 0.1.0 aliases
# of its modules, and ``python -m torchprune_share`` (which runs the command line).
DEMO_SIDE = ("torchprune_share.demo", "torchprune_share.data", "torchprune_share.models")

LAYERING_PROBE = """
import importlib, json, pkgutil, sys
import torchprune_share
demo_side = {demo_side!r}

def library_modules(package):
    # pkgutil.walk_packages would import every sub-package, the demo's too, to recurse.
    for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if m.name in demo_side or m.name == "torchprune_share.__main__":
            continue
        module = importlib.import_module(m.name)
        yield m.name
        if m.ispkg:
            yield from library_modules(module)

names = list(library_modules(torchprune_share))
loaded = sorted(n for n in sys.modules if n.startswith("torchprune_share.demo"))
print(json.dumps({{"checked": names, "demo_loaded": loaded}}))
"""


def test_the_library_imports_nothing_of_the_demo() -> None:
    # A fresh interpreter: this one has imported the demo already.
    code = LAYERING_PROBE.format(demo_side=DEMO_SIDE)
    root = Path(torchprune_share.__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    result = json.loads(out)
    assert result["demo_loaded"] == []
    checked = set(result["checked"])
    # The walk really went through the library (core, analysis, codec, file format, CLI).
    assert {"torchprune_share.training", "torchprune_share.cli"} <= checked
    assert any(n.startswith("torchprune_share.codec.") for n in checked)
    assert len(checked) >= 15


def test_the_0_1_0_import_paths_still_work() -> None:
    assert data.load_digits is demo_data.load_digits
    assert data.make_loaders is demo_data.make_loaders
    assert data.MNIST_FILES is demo_data.MNIST_FILES
    assert models.LeNet300100 is demo_models.LeNet300100
    assert models.build_model is demo_models.build_model
    from torchprune_share.demo import prune_agp, save_and_reload, share_and_finetune, train_dense

    assert [
        f.__module__ for f in (prune_agp, save_and_reload, share_and_finetune, train_dense)
    ] == ["torchprune_share.demo.stages"] * 4
    assert sorted(data.__all__) == sorted(demo_data.__all__)
    assert sorted(models.__all__) == sorted(demo_models.__all__)


def test_fixed_choices_skip_the_recommendations(tmp_path: Path) -> None:
    sparsities = {"fc1.weight": 0.9, "fc2.weight": 0.8}
    bits = {"fc1.weight": 4, "fc2.weight": 2}
    config = DemoConfig(
        epochs=5,
        prune_epochs=2,
        share_epochs=1,
        progress=False,
        out=str(tmp_path),
        sparsities=sparsities,
        bits=bits,
    )
    r = run_demo(config)
    assert r["sparsities"] == sparsities and r["bits"] == bits
    assert list(r["seconds"]) == [
        "train",
        "sensitivity scan",
        "pruning",
        "bits scan",
        "sharing",
        "file",
        "inference",
    ]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["file_bytes"] == r["file_bytes"] == (tmp_path / "model.tpsc").stat().st_size
    assert "table" not in saved and r["table"].endswith(f"({r['total_seconds']} s)")
    model = demo_models.LeNet300100(8)
    torchprune_share.load_compressed(model, tmp_path / "model.tpsc")
    for name, s in sparsities.items():
        owner, _, attr = name.rpartition(".")
        w = getattr(model.get_submodule(owner), attr).detach()
        assert float((w == 0).float().mean()) == pytest.approx(s, abs=1e-4)
        assert torch.unique(w[w != 0]).numel() <= 2 ** bits[name]
    # fc3 was neither pruned nor shared: every weight is kept, as a plain fp32 tensor.
    assert int((model.fc3.weight == 0).sum()) == 0
