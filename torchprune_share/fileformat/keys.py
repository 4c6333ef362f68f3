"""Which ``state_dict`` keys belong to which pruned or shared tensor.

A file stores a pruned or shared tensor once, under its dense name (``"fc1.weight"``),
while the model's ``state_dict`` holds it under its reparametrization's keys
(``fc1.parametrizations.weight.original``, ``....0.mask``, ...). The writer and the
loader map between the two here.

Example:
    >>> from torchprune_share import level_prune
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> _ = level_prune(net[0], amount=0.5)
    >>> sorted(owners(net).items())  # doctest: +NORMALIZE_WHITESPACE
    [('0.parametrizations.weight.0.mask', '0.weight'),
     ('0.parametrizations.weight.original', '0.weight')]
"""

from __future__ import annotations

import re

from torch import nn

from ..checkpoint import compressed_tensors, torch_pruned_tensors

__all__ = ["REPARAM_KEY", "owners", "reparam_base"]

REPARAM_KEY = re.compile(r"^(?:.*\.)?parametrizations\.[^.]+\.")


def reparam_base(q: str) -> str:
    """The key prefix of the reparametrization of the tensor named ``q``.

    Example:
        >>> reparam_base("fc1.weight"), reparam_base("weight")
        ('fc1.parametrizations.weight', 'parametrizations.weight')
    """
    prefix, _, name = q.rpartition(".")
    return f"{prefix}.parametrizations.{name}" if prefix else f"parametrizations.{name}"


def owners(model: nn.Module) -> dict[str, str]:
    """``state_dict`` key -> dense name, for the keys of every pruned or shared tensor."""
    bases = {reparam_base(q) + ".": q for q, *_ in compressed_tensors(model)}
    owner = {}
    for key in model.state_dict():
        m = REPARAM_KEY.match(key)
        if m and m[0] in bases:
            owner[key] = bases[m[0]]
    for q, *_ in torch_pruned_tensors(model):
        owner[q + "_orig"] = owner[q + "_mask"] = q
    return owner
