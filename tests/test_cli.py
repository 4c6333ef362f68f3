"""The command line: the README's main job (``demo``), ``report`` and ``--help``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchprune_share import load_compressed
from torchprune_share.cli import main
from torchprune_share.demo.data import load_digits
from torchprune_share.demo.models import LeNet300100
from torchprune_share.training import evaluate

OUTPUTS = [
    "prune_sensitivity.png",
    "prune_sensitivity.csv",
    "bits_sensitivity.png",
    "bits_sensitivity.csv",
    "summary.csv",
    "summary.md",
    "model.tpsc",
    "results.json",
]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    return out


def test_demo_writes_every_output(demo_out: Path) -> None:
    for name in OUTPUTS:
        assert (demo_out / name).stat().st_size > 100, name
    png = (demo_out / "prune_sensitivity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_results_hold_up(demo_out: Path) -> None:
    r = json.loads((demo_out / "results.json").read_text())
    acc = r["accuracy"]
    assert acc["dense"] > 94.0
    assert acc["final"] > acc["dense"] - 2.0
    assert acc["reloaded"] == acc["final"]
    assert r["reloaded_outputs_identical"] is True
    assert r["file_bytes"] == (demo_out / "model.tpsc").stat().st_size
    assert r["ratio_vs_torch_save"] > 15.0
    assert set(r["sparsities"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(0.0 <= s <= 0.97 for s in r["sparsities"].values())
    assert all(3 <= b <= 8 for b in r["bits"].values())


def test_demo_file_reloads_into_a_fresh_model(demo_out: Path) -> None:
    r = json.loads((demo_out / "results.json").read_text())
    model = load_compressed(LeNet300100(8), demo_out / "model.tpsc")
    # Same split and seed as the demo, so the same test set.
    test = load_digits(seed=0).test
    acc, _ = evaluate(model, [test.tensors])
    assert acc == pytest.approx(r["accuracy"]["reloaded"])
    w = model.fc1.weight.detach()
    density = float((w != 0).float().mean())
    assert density == pytest.approx(1 - r["sparsities"]["fc1.weight"], abs=1e-3)
    assert torch.unique(w[w != 0]).numel() <= 2 ** r["bits"]["fc1.weight"]


def test_summary_csv_matches_the_file(demo_out: Path) -> None:
    rows = list(csv.DictReader((demo_out / "summary.csv").open()))
    total = rows[-1]
    assert total["tensor"] == "total"
    size = (demo_out / "model.tpsc").stat().st_size
    assert int(total["PQH"]) < size < int(total["PQH"]) + 64
    assert {"fc1.weight", "fc1.bias", "fc3.weight"} <= {r["tensor"] for r in rows}


def test_report_command(demo_out: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    md = tmp_path / "r.md"
    assert main(["report", str(demo_out / "model.tpsc"), "--markdown", str(md)]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "P+Q+H" in text and "total" in text
    assert md.read_text().startswith("| tensor |")


def test_report_of_a_bad_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.tpsc"
    bad.write_bytes(b"not a model file at all")
    assert main(["report", str(bad)]) == 2
    assert "not a torchprune_share file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.tpsc")]) == 2


def test_mnist_without_files_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--data", "mnist", "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "nothing is downloaded" in err
    assert main(["demo", "--data", "mnist", "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_help_shows_examples() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "torchprune_share", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "examples:" in out and "torchprune-share demo" in out and "report" in out
    out = subprocess.run(
        [sys.executable, "-m", "torchprune_share", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--model", "--data-dir", "--max-drop", "--seed", "--quiet", "--out"):
        assert flag in out
