"""Every docstring Example in the package runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from torch import nn


def _modules() -> list[str]:
    """Every module of the package (sub-packages included), as ``a.b`` under the package."""
    import pkgutil

    import torchprune_share

    names = []
    for info in pkgutil.walk_packages(torchprune_share.__path__, "torchprune_share."):
        name = info.name.removeprefix("torchprune_share.")
        if name.split(".")[-1] != "__main__":
            names.append(name)
    return sorted(names)


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(f"torchprune_share.{name}")
    result = doctest.testmod(
        module,
        extraglobs={"nn": nn, "torch": torch, "np": np},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    assert result.attempted > 0, f"torchprune_share.{name} has no docstring example"
