"""``to_inference``: swap every compressed layer for an inference module, fastest per layer.

Each compressed ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` is rebuilt in the three
backends of :mod:`~torchprune_share.inference.modules` and timed once, at conversion, on
this machine and thread count; the layer keeps the backend whose slowest ratio to dense
over the measured batch sizes is smallest. Dense always qualifies (ratio 1), so no layer
ends up slower than dense at a measured batch size. The choice and the timings are in the
module's ``repr`` and in :func:`inference_summary`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune
from tqdm import tqdm

from ..parametrizations import get_reparametrization
from ..registration import builds_state
from .conv import CompressedConv1d, CompressedConv2d, conv_settings
from .layout import Layout, build_layout
from .modules import BACKENDS, CompressedLinear, CompressedModule, bias_of, layout_of
from .source import UnsupportedWeight

__all__ = [
    "InferenceSummary",
    "LayerChoice",
    "inference_module",
    "inference_summary",
    "to_inference",
]

logger = logging.getLogger(__name__)

CHOICES = ("auto", *BACKENDS)
# A sparse backend must beat dense by this margin to be chosen: timings at conversion are
# noisy, and a near-tie is not worth a slower layer when the machine is busier.
MARGIN = 0.95
# CSR is taken over the kernel only when clearly faster: the kernel's layout is ~5x
# smaller.
KERNEL_PREFERENCE = 1.10


@dataclass
class LayerChoice:
    """The dispatch of one layer: what was measured and what was chosen.

    Attributes:
        name (str): qualified module name.
        shape (tuple): ``(out_features, in_features)`` of the (flattened) weight.
        density (float): kept fraction of the weight.
        codes (str): ``"4-bit"``, ``"8-bit"``, ... or ``"float32"`` (no codebook).
        backend (str): the chosen backend.
        seconds (dict): backend -> best time per measured batch size (seconds).
        batch_sizes (tuple): the measured batch sizes.
        nbytes (int): bytes the converted layer holds.
        dense_bytes (int): bytes of its dense ``float32`` weight and bias.
    """

    name: str
    shape: tuple[int, int]
    density: float
    codes: str
    backend: str
    seconds: dict[str, list[float]] = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = ()
    nbytes: int = 0
    dense_bytes: int = 0


class InferenceSummary:
    """The per-layer dispatch of a converted model; prints as a table.

    Attributes:
        rows (list[LayerChoice]): one per converted layer, in model order.

    Example:
        >>> from torchprune_share import level_prune
        >>> net = nn.Sequential(nn.Linear(32, 16))
        >>> _ = level_prune(net[0], amount=0.9)
        >>> net = to_inference(net, backend="kernel", progress=False)
        >>> s = inference_summary(net)
        >>> s.rows[0].backend, s.rows[0].shape, s.dense_bytes
        ('kernel', (16, 32), 2112)
    """

    def __init__(self, rows: Sequence[LayerChoice]) -> None:
        self.rows = list(rows)

    @property
    def nbytes(self) -> int:
        """Bytes held by the converted layers together."""
        return sum(r.nbytes for r in self.rows)

    @property
    def dense_bytes(self) -> int:
        """Bytes the same layers hold as dense ``float32`` weights and biases."""
        return sum(r.dense_bytes for r in self.rows)

    def __str__(self) -> str:
        head = ["layer", "shape", "density", "codes", "backend"]
        sizes = self.rows[0].batch_sizes if self.rows else ()
        head += [f"{b} @ b={n}" for n in sizes for b in ("dense", "csr", "kernel")]
        head += ["bytes", "dense bytes"]
        lines = [head]
        for r in self.rows:
            cells = [r.name, "x".join(map(str, r.shape)), f"{r.density:.3f}", r.codes, r.backend]
            for j in range(len(sizes)):
                for b in ("dense", "csr", "kernel"):
                    t = r.seconds.get(b)
                    cells.append(f"{1e3 * t[j]:.3f} ms" if t else "-")
            cells += [f"{r.nbytes:,}", f"{r.dense_bytes:,}"]
            lines.append(cells)
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in lines)

    def __repr__(self) -> str:
        return f"InferenceSummary({len(self.rows)} layers)\n{self}"


def inference_summary(model: nn.Module) -> InferenceSummary:
    """Collect the dispatch records of the inference modules in ``model``.

    Args:
        model (nn.Module): a model returned by :func:`to_inference`.

    Returns:
        The :class:`InferenceSummary` (layers built otherwise have no timings).
    """
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, CompressedModule):
            choice = getattr(module, "dispatch", None)
            if choice is None:
                choice = _record(name, module, module.backend)
            rows.append(choice)
    return InferenceSummary(rows)


def _record(name: str, module: nn.Module, backend: str) -> LayerChoice:
    rows, cols = module.out_features, module.in_features
    bits = module.code_bits
    bias = 0 if module.bias is None else module.bias.numel()
    return LayerChoice(
        name=name,
        shape=(rows, cols),
        density=module.nnz / max(rows * cols, 1),
        codes="float32" if bits is None else f"{bits}-bit",
        backend=backend,
        nbytes=module.nbytes,
        dense_bytes=4 * (rows * cols + bias),
    )


def _is_compressed(module: nn.Module) -> bool:
    if get_reparametrization(module, "weight") is not None:
        return True
    return any(
        isinstance(h, prune.BasePruningMethod) and h._tensor_name == "weight"
        for h in module._forward_pre_hooks.values()
    )


def _build(module: nn.Module, layout: Layout, bias: Tensor | None, backend: str) -> nn.Module:
    if isinstance(module, nn.Linear):
        return CompressedLinear(layout, bias, backend)
    cls = CompressedConv2d if isinstance(module, nn.Conv2d) else CompressedConv1d
    return cls(layout, bias, backend, in_channels=module.in_channels, **conv_settings(module))


def _best_time(fn, x: Tensor, repeats: int) -> float:
    with torch.inference_mode():
        fn(x)  # compiles the kernel for these types on first use
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
    return best


def _inputs(module: nn.Module, shape: tuple[int, ...] | None, batch_sizes, gen) -> list[Tensor]:
    if isinstance(module, nn.Linear):
        return [torch.randn(b, module.in_features, generator=gen) for b in batch_sizes]
    # One image per measurement; its patches are the kernel's batch.
    if shape is None:
        side = [3 * k + 1 for k in module.kernel_size]
        shape = (module.in_channels, *side)
    return [torch.randn(1, *shape, generator=gen)]


def _choose(candidates: dict[str, nn.Module], xs: list[Tensor], repeats: int):
    seconds = {b: [_best_time(m, x, repeats) for x in xs] for b, m in candidates.items()}
    dense = seconds["dense"]
    worst = {b: max(t / max(d, 1e-12) for t, d in zip(ts, dense)) for b, ts in seconds.items()}
    best = "dense"
    for b in ("csr", "kernel"):
        if b in worst and worst[b] < MARGIN * worst[best]:
            best = b
    if best == "csr" and "kernel" in worst and worst["kernel"] <= KERNEL_PREFERENCE * worst["csr"]:
        best = "kernel"
    return best, seconds


# Below this many weights a call of any backend costs about its Python overhead (~20 us;
# benchmarks/inference.py found dense fastest for every LeNet layer), so such layers take
# the dense backend without being timed, which also spares compiling the kernels.
SMALL_LAYER = 1 << 16


def _dispatch(
    qname: str,
    module: nn.Module,
    layout: Layout,
    bias,
    backend: str,
    shape,
    batch_sizes,
    repeats,
    gen,
) -> nn.Module:
    if backend == "auto" and layout.rows * layout.cols_total < SMALL_LAYER:
        backend = "dense"
    if backend != "auto":
        new = _build(module, layout, bias, backend)
        new.layer_name = qname
        new.dispatch = _record(qname, new, new.backend)
        return new
    candidates = {b: _build(module, layout, bias, b) for b in BACKENDS}
    if candidates["kernel"].backend != "kernel":  # numba missing: it is a CSR copy
        del candidates["kernel"]
    xs = _inputs(module, shape, batch_sizes, gen)
    best, seconds = _choose(candidates, xs, repeats)
    new = candidates[best]
    new.layer_name = qname
    new.dispatch = _record(qname, new, best)
    new.dispatch.seconds = seconds
    new.dispatch.batch_sizes = tuple(batch_sizes) if isinstance(module, nn.Linear) else (1,)
    return new


def inference_module(
    module: nn.Module,
    kept: np.ndarray | Tensor,
    codes: np.ndarray | None = None,
    codebook: Tensor | None = None,
    values: np.ndarray | Tensor | None = None,
    bias: Tensor | None = None,
    *,
    backend: str = "kernel",
    name: str = "",
    input_shape: tuple[int, ...] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 64),
    repeats: int = 5,
    seed: int = 0,
) -> nn.Module:
    r"""Build the inference module for ``module`` from a weight's parts, without its weight.

    The file route: ``module`` (an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` of the
    freshly built architecture) only gives its shape and settings; the weight comes from
    ``kept`` / ``codes`` / ``codebook`` or ``values`` (see
    :func:`~torchprune_share.inference.layout.build_layout`; a convolution's weight is
    flattened to ``(out_channels, in_channels * prod(kernel_size))``). With
    ``backend="auto"`` the three backends are built and timed as in :func:`to_inference`,
    which holds the dense weight for the moment of the timing; any other backend never
    builds a dense weight unless it is ``"dense"``.

    Args:
        module (nn.Module): the layer whose shape and settings to take.
        kept, codes, codebook, values: the weight's parts.
        bias (Tensor, optional): the bias.
        backend (str): ``"kernel"`` (default), ``"csr"``, ``"dense"`` or ``"auto"``.
        name (str): the layer's qualified name, for messages and the summary.
        input_shape (tuple, optional): a convolution's input ``(C, H, W)`` for the timing.
        batch_sizes, repeats, seed: the timing, as for :func:`to_inference`.

    Returns:
        A :class:`CompressedLinear`, :class:`CompressedConv1d` or :class:`CompressedConv2d`.

    Example:
        >>> conv = nn.Conv2d(1, 2, 2)
        >>> m = inference_module(conv, np.array([0, 7]), values=np.array([1.0, -1.0]))
        >>> m(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [1.0, -1.0]
    """
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        raise TypeError(
            f"module must be an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(module).__name__}"
        )
    if not isinstance(module, nn.Linear):
        conv_settings(module)
    weight_shape = module.weight.shape
    rows, cols = int(weight_shape[0]), int(np.prod(weight_shape[1:]))
    layout = build_layout(rows, cols, kept, codes, codebook, values)
    gen = torch.Generator().manual_seed(seed)
    sizes = tuple(batch_sizes)
    return _dispatch(name, module, layout, bias, backend, input_shape, sizes, repeats, gen)


def _convert_one(
    qname: str, module: nn.Module, backend: str, shape, batch_sizes, repeats: int, gen
) -> nn.Module:
    layout, bias = layout_of(module), bias_of(module)
    return _dispatch(qname, module, layout, bias, backend, shape, batch_sizes, repeats, gen)


def _input_shapes(model: nn.Module, example_inputs, targets) -> dict[str, tuple[int, ...]]:
    if example_inputs is None:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for qname, module in targets:
        if not isinstance(module, nn.Linear):

            def hook(mod, args, qname=qname):
                shapes.setdefault(qname, tuple(args[0].shape[1:]))

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _targets(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    targets, skipped = [], []
    for qname, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        if not _is_compressed(module):
            if parametrize.is_parametrized(module, "weight"):
                skipped.append(f"{qname or type(module).__name__}: a foreign parametrization")
            continue
        if not isinstance(module, nn.Linear):
            try:
                conv_settings(module)
            except UnsupportedWeight as err:
                skipped.append(f"{qname}: {err}")
                continue
        targets.append((qname, module))
    return targets, skipped


@builds_state
def to_inference(
    model: nn.Module,
    backend: str = "auto",
    *,
    batch_sizes: Sequence[int] = (1, 8, 64),
    example_inputs: Tensor | tuple | None = None,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    r"""Replace every compressed Linear/Conv1d/Conv2d of ``model`` by an inference module.

    A layer is compressed when its weight carries this package's pruning or sharing or a
    ``torch.nn.utils.prune`` hook; plain layers stay as they are. The replaced layers'
    parametrizations are gone (as after :func:`~torchprune_share.bake`); the new modules
    refuse ``backward``. Layers this cannot convert (a foreign parametrization, grouped
    convolutions, string padding) are left unchanged, with one log line each.

    Args:
        model (nn.Module): the model, changed in place.
        backend (str): ``"auto"`` (default: time dense, torch CSR and the kernel once per
            layer and keep the fastest) or one of ``"kernel"``, ``"csr"``, ``"dense"``.
        batch_sizes (sequence of int): batch sizes timed for linear layers. Default:
            ``(1, 8, 64)``.
        example_inputs (Tensor or tuple, optional): one input of the model, run once to
            learn each convolution's input size for the timing (otherwise a ``3k+1``
            square image is assumed).
        repeats (int): timed calls per measurement (the best is kept). Default: 5.
        seed (int): seed of the random timing inputs. Default: 0.
        progress (bool): show a tqdm bar over the layers. Default: True.

    Returns:
        ``model`` (or the new module when ``model`` itself is a compressed layer).

    Example:
        >>> from torchprune_share import level_prune, register_weight_sharing
        >>> net = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        >>> _ = level_prune(net[0], amount=0.9)
        >>> _ = register_weight_sharing(net[0], bits=4)
        >>> x = torch.randn(4, 256)
        >>> before = net(x)
        >>> net = to_inference(net, progress=False)
        >>> type(net[0]).__name__, type(net[2]).__name__
        ('CompressedLinear', 'Linear')
        >>> bool((net(x) - before).abs().max() < 1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    sizes = tuple(batch_sizes)
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    targets, skipped = _targets(model)
    for line in skipped:
        logger.info("to_inference leaves %s", line)
    if not targets:
        logger.info("to_inference: no compressed Linear/Conv layer in the model, nothing to do")
        return model
    shapes = _input_shapes(model, example_inputs, targets) if backend == "auto" else {}
    gen = torch.Generator().manual_seed(seed)
    converted = []
    for qname, module in tqdm(targets, desc="to_inference", disable=not progress):
        try:
            new = _convert_one(qname, module, backend, shapes.get(qname), sizes, repeats, gen)
        except UnsupportedWeight as err:
            logger.info("to_inference leaves %s: %s", qname, err)
            continue
        converted.append((qname, new))
    for qname, new in converted:
        if not qname:
            return new
        parent_name, _, child = qname.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model
