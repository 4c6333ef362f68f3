"""Loading a ``.tpsc`` file into a freshly built model of the same architecture.

The file is parsed with the model's expectations (:class:`_Expected`: every name and
shape is checked against the model before a record's body is read), turned into the
``state_dict`` that :func:`torchprune_share.load_state_dict` takes, and loaded; the
model changes only once the whole file has been validated.

Example:
    >>> from torchprune_share.fileformat.writer import encode_model
    >>> net = load_compressed(nn.Linear(2, 2), encode_model(nn.Linear(2, 2)))
    >>> type(net).__name__
    'Linear'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_state_dict, owned_keys
from ..checkpoint import bake as bake_model
from ..names import reparam_base, split
from ..registration import builds_state
from ..state import PLAIN, TensorState
from .reader import Record, parse, read_source
from .spec import PRUNED, RAW, SHARED, CompressedFileError

__all__ = ["load_compressed"]


def _module_and_name(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    prefix, name = split(qualified)
    return (model.get_submodule(prefix) if prefix else model), name


@dataclass
class _Expected:
    """The tensors a file for a model holds: name -> shape, by how they may be stored.

    Example:
        >>> from torchprune_share import level_prune
        >>> exp = _Expected.of(level_prune(nn.Linear(2, 3), amount=0.5))
        >>> exp.plain, exp.compressible, sorted(exp.required)
        ({'bias': (3,)}, {'bias': (3,), 'weight': (3, 2)}, ['bias', 'weight'])
    """

    plain: dict[str, tuple[int, ...]]  # raw records: every key not owned by a reparam
    compressible: dict[str, tuple[int, ...]]  # pruned/shared: float parameters
    required: set[str]

    @classmethod
    def of(cls, model: nn.Module) -> _Expected:
        """What a file for ``model`` must hold, read from the model's tensor states."""
        owner = owned_keys(model)
        plain, compressible = {}, {}
        for key, t in model.state_dict().items():
            q = owner.get(key)
            if q is not None:
                compressible[q] = tuple(TensorState.of(*_module_and_name(model, q)).shape)
            elif isinstance(t, Tensor):
                plain[key] = tuple(t.shape)
                state = TensorState.find(*_module_and_name(model, key))
                if state is not None and state.kind == PLAIN and state.dtype.is_floating_point:
                    compressible[key] = tuple(t.shape)
        required = {owner.get(key, key) for key in model.state_dict()}
        return cls(plain, compressible, required)

    def problem(self, rec: Record) -> str | None:
        """Why ``rec`` (name, kind and shape read) does not fit the model, or ``None``."""
        names = self.plain if rec.kind == RAW else self.compressible
        if rec.name not in names:
            if rec.kind == RAW and rec.name in self.compressible:
                return "stored plain, but the model prunes or shares it; use a fresh model"
            if rec.name in self.plain:
                return "stored pruned or shared, but the model's tensor is no float parameter"
            return "the model has no such tensor (a file for another architecture?)"
        if names[rec.name] != rec.shape:
            return f"shape {rec.shape} does not match the model's {names[rec.name]}"
        return None


def _state_dict(records: list[Record]) -> dict[str, Any]:
    """The state_dict (as :func:`load_state_dict` takes it) of validated records."""
    state: dict[str, Any] = {}
    for rec in records:
        if rec.kind == RAW:
            state[rec.name] = rec.values.reshape(rec.shape)
            continue
        base = reparam_base(rec.name)
        kept = torch.arange(rec.numel) if rec.positions is None else torch.from_numpy(rec.positions)
        if rec.kind == PRUNED:
            original = torch.zeros(rec.numel, dtype=rec.dtype)
            mask = torch.zeros(rec.numel, dtype=torch.bool)
            original[kept], mask[kept] = rec.values, True
            state[f"{base}.original"] = original.reshape(rec.shape)
            state[f"{base}.0.mask"] = mask.reshape(rec.shape)
        else:
            k = rec.num_centroids
            zero = k if rec.n_kept < rec.numel else 0  # k may not fit when nothing is pruned
            index = torch.full((rec.numel,), zero, dtype=rec.index_dtype)
            index[kept] = torch.from_numpy(rec.codes).to(rec.index_dtype)
            cb_shape = (rec.rows, k) if rec.config.granularity == "per_channel" else (k,)
            state[f"{base}.original"] = rec.codebook.reshape(cb_shape).to(rec.dtype)
            state[f"{base}.0.index"] = index.reshape(rec.shape)
            state[f"{base}.0._extra_state"] = rec.config.to_state(k)
    return state


def _inference_parts(rec: Record) -> dict[str, Any]:
    """A weight record as :func:`~torchprune_share.inference.inference_module` takes it."""
    kept = np.arange(rec.numel) if rec.positions is None else rec.positions
    if rec.kind == PRUNED:
        return {"kept": kept, "values": rec.values}
    k = rec.num_centroids
    cfg = rec.config
    if cfg.granularity == "per_tensor":
        return {"kept": kept, "codes": rec.codes, "codebook": rec.codebook.reshape(k)}
    axis = cfg.channel_dim(len(rec.shape))
    table = rec.codebook.reshape(rec.rows, k).to(torch.float32)
    if axis == 0:
        return {"kept": kept, "codes": rec.codes, "codebook": table}
    # Codebooks along another axis: each kept entry's value, looked up once here.
    channel = torch.from_numpy(np.unravel_index(kept, rec.shape)[axis].astype(np.int64))
    codes = torch.from_numpy(rec.codes.astype(np.int64))
    return {"kept": kept, "values": table[channel, codes]}


def _inference_modules(
    model: nn.Module, records: list[Record], backend: str
) -> dict[str, nn.Module]:
    """``{module name: inference module}`` for every compressed Linear/Conv weight record."""
    from ..inference import inference_module

    raw = {r.name: r for r in records if r.kind == RAW}
    out = {}
    for rec in records:
        prefix, name = split(rec.name)
        if rec.kind not in (PRUNED, SHARED) or name != "weight":
            continue
        module = model.get_submodule(prefix) if prefix else model
        convertible = isinstance(module, nn.Linear) or (
            isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1
        )
        # A compressed bias (rare) keeps the layer on the parametrized route.
        has_bias = isinstance(getattr(module, "bias", None), Tensor)
        if not convertible or not prefix or (has_bias and f"{prefix}.bias" not in raw):
            continue
        bias = raw.get(f"{prefix}.bias")
        out[prefix] = inference_module(
            module,
            **_inference_parts(rec),
            bias=None if bias is None else bias.values.reshape(bias.shape),
            backend=backend,
            name=prefix,
        )
    return out


def _load_for_inference(model: nn.Module, records: list[Record], backend: str) -> None:
    """Swap in inference modules built from the records, then load everything else."""
    modules = _inference_modules(model, records, backend)  # may fail: model untouched
    done = {f"{p}.{n}" for p in modules for n in ("weight", "bias")}
    rest = [r for r in records if r.name not in done]
    for prefix, module in modules.items():
        parent, child = split(prefix)
        setattr(model.get_submodule(parent) if parent else model, child, module)
    state = _state_dict(rest)
    for prefix, module in modules.items():
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    load_state_dict(model, state)


@builds_state
def load_compressed(
    model: nn.Module,
    path: str | Path | BinaryIO | bytes,
    *,
    bake: bool = False,
    inference: bool = False,
    backend: str = "kernel",
) -> nn.Module:
    r"""Load a compressed file into a freshly built model of the same architecture.

    The model becomes pruned and shared exactly as the saved one (same
    reparametrizations and settings, trainable codebooks) and computes bitwise the same
    outputs; a pruned tensor's ``original`` is zero where the mask is ``False`` (the
    file does not store pruned values). The whole file is checked (checksum, version,
    every tensor's name, shape and streams) before the model changes: on any problem a
    :class:`CompressedFileError` says what and where, and the model is left as it was.
    Reading never unpickles anything.

    Args:
        model (nn.Module): the model to load into (changed in place).
        path (str, Path, binary file or bytes): the file, or its contents.
        bake (bool): give plain ``nn.Parameter`` weights of the same values instead of
            reparametrizations. Default: False.
        inference (bool): build inference modules
            (:class:`~torchprune_share.inference.CompressedLinear`, ``...Conv1d/2d``)
            straight from the file's positions, codes and codebooks for every pruned or
            shared ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` weight, never materialising
            a dense weight; the model is then for inference only (as after
            :func:`~torchprune_share.to_inference`). Default: False.
        backend (str): the inference modules' backend: ``"kernel"`` (default, the
            compressed kernels), ``"csr"``, ``"dense"`` or ``"auto"`` (timed per layer,
            which holds each dense weight for the moment of the timing).

    Returns:
        ``model``.

    Raises:
        TypeError: ``model``, ``path`` or ``bake`` of the wrong type.
        CompressedFileError: the file is malformed or does not fit the model.

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> from torchprune_share.fileformat import load_compressed, save_compressed
        >>> net = nn.Sequential(nn.Linear(64, 32))
        >>> _ = register_weight_sharing(level_prune(net[0], amount=0.9), bits=3)
        >>> _ = save_compressed(net, "/tmp/net.tpsc")
        >>> fresh = load_compressed(nn.Sequential(nn.Linear(64, 32)), "/tmp/net.tpsc")
        >>> torch.equal(fresh[0].weight, net[0].weight)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(bake, bool):
        raise TypeError(f"bake must be a bool, got {type(bake).__name__}")
    if not isinstance(inference, bool):
        raise TypeError(f"inference must be a bool, got {type(inference).__name__}")
    if bake and inference:
        raise ValueError("bake=True and inference=True exclude each other: choose one")
    expected = _Expected.of(model)
    records, _ = parse(read_source(path), expected.problem)
    missing = sorted(expected.required - {r.name for r in records})
    if missing:
        raise CompressedFileError(f"the file lacks tensors the model has: {missing}")
    try:
        if inference:
            _load_for_inference(model, records, backend)
        else:
            load_state_dict(model, _state_dict(records))
    except CheckpointError as err:
        raise CompressedFileError(str(err)) from err
    if bake:
        bake_model(model)
    return model
