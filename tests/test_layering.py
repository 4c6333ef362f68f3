"""The import rules of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
import pathlib

import torchprune_share

ROOT = pathlib.Path(torchprune_share.__file__).parent

# The numeric core: tensors and arrays in and out, no nn.Module.
NUMERIC_CORE = [
    "kmeans",
    "codec",
    "calibration/augment.py",
    "calibration/hessian.py",
    "calibration/sweep.py",
    "calibration/refit.py",
    "calibration/matrix.py",
    "codebook.py",
    "config.py",
    "jit.py",
    "inference/kernels.py",
    "inference/layout.py",
]


def _files(entry: str) -> list[pathlib.Path]:
    path = ROOT / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _trees():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_no_underscore_name_is_imported_across_modules():
    bad = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                names = [a.name for a in node.names if a.name.startswith("_")]
                if node.module and any(p.startswith("_") for p in node.module.split(".")):
                    names.append(node.module)
                bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n != "__version__"]
    assert not bad


def test_the_numeric_core_uses_no_nn_module():
    bad = []
    for entry in NUMERIC_CORE:
        for path in _files(entry):
            if not path.exists():
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.nn"):
                    if any(a.name in ("nn", "Module") for a in node.names):
                        bad.append(f"{path.relative_to(ROOT)}: from {node.module} import nn")
                if isinstance(node, ast.Import) and any(a.name == "torch.nn" for a in node.names):
                    bad.append(f"{path.relative_to(ROOT)}: import torch.nn")
    assert not bad
