"""Docstring examples of the core modules added for issue 9 (tests/test_doctests.py lists the rest)."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from torch import nn

MODULES = [
    "codebook",
    "compat",
    "config",
    "evaluation",
    "levels",
    "names",
    "options",
    "prune_methods",
    "quantizer",
    "recommend",
    "results",
    "state",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"torchprune_share.{name}")
    result = doctest.testmod(
        module,
        extraglobs={"nn": nn, "torch": torch, "np": np},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    assert result.attempted > 0
