"""Replaying one block of the model instead of the whole forward, group after group.

Sequential calibration records each layer group's inputs with the earlier groups
compressed. Run naively, every group costs a forward from the model's input up to the
group: quadratic in depth (a 6-layer encoder spends 3.5x the necessary forward work).
Here the groups are split into segments that share an *anchor*: a module called once per
forward, containing every group of the segment, whose inputs are tensors. The anchor's
inputs are recorded once per segment (a forward stopped as the anchor is entered, with
every earlier segment already compressed), and each group of the segment then runs only
the anchor on them, stopped again once the group has read its inputs.

Which anchors: the discovery forward times when each module is entered; a segment of
``n`` groups under an anchor entered at time ``t`` saves about ``t · (n − 1)`` of forward
time, and a dynamic programme over the group order picks the segments that save most.
Replaying is exact (the same operations on the same inputs), so the choice affects the
time only, never the statistics.

Assumed, as by every block-wise post-training method: a module called once per forward
computes from its inputs, parameters and buffers, not from state that other modules set
during the forward. Anchors with hooks of their own, or inputs other than tensors, plain
scalars and ``None`` (in tuples, lists or dicts), are not used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Clock", "Recorded", "plan_anchors", "record_inputs", "replay"]

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


class Clock:
    """A global forward pre-hook noting when each module is first entered, and how often.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> with Clock() as clock:
        ...     _ = net(torch.ones(1, 2))
        >>> clock.calls[id(net[0])], clock.start[id(net)] <= clock.start[id(net[1])]
        (1, True)
    """

    def __init__(self) -> None:
        self.start: dict[int, float] = {}
        self.calls: dict[int, int] = {}
        self._t0 = 0.0
        self._handle: Any = None

    def __enter__(self) -> Clock:
        self._t0 = time.perf_counter()

        def note(module: nn.Module, args: tuple) -> None:
            key = id(module)
            self.calls[key] = self.calls.get(key, 0) + 1
            self.start.setdefault(key, time.perf_counter() - self._t0)

        self._handle = nn.modules.module.register_module_forward_pre_hook(note)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _ancestors(module: nn.Module, names: dict[int, str]) -> list[str]:
    """Qualified names of the strict ancestors of ``module`` below the root, outermost first."""
    path = names.get(id(module))
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def plan_anchors(
    model: nn.Module, groups: Sequence[Sequence[nn.Module]], clock: Clock
) -> list[nn.Module | None]:
    """The anchor of each group (``None``: run the whole forward), saving the most time.

    Args:
        model (nn.Module): the model.
        groups: the layer groups in execution order, each a list of modules.
        clock (Clock): timings of one discovery forward of ``model``.

    Returns:
        One anchor per group; consecutive groups with the same anchor share one recording.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> with Clock() as clock:
        ...     _ = net(torch.ones(1, 2))
        >>> plan = plan_anchors(net, [[net[0]], [net[1][0]], [net[1][1]]], clock)
        >>> plan[0] is None, plan[1] is net[1], plan[2] is net[1]
        (True, True, True)
    """
    names = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())

    def eligible(name: str) -> bool:
        m = modules[name]
        return clock.calls.get(id(m)) == 1 and not m._forward_pre_hooks

    cands = [{a for a in _ancestors(group[0], names) if eligible(a)} for group in groups]
    for i, group in enumerate(groups):
        for m in group[1:]:
            cands[i] &= set(_ancestors(m, names))
    n = len(groups)
    # save[j]: the most time saved on groups[:j]; choice[j]: (segment start, anchor name)
    save = [0.0] * (n + 1)
    choice: list[tuple[int, str | None]] = [(0, None)] * (n + 1)
    for j in range(1, n + 1):
        save[j], choice[j] = save[j - 1], (j - 1, None)
        common = set(cands[j - 1])
        i = j - 1
        while common and i >= 0:
            best = max(common, key=lambda a: (clock.start.get(id(modules[a]), 0.0), a))
            gain = save[i] + clock.start.get(id(modules[best]), 0.0) * (j - 1 - i)
            if j - 1 - i > 0 and gain > save[j]:
                save[j], choice[j] = gain, (i, best)
            i -= 1
            if i >= 0:
                common &= cands[i]
    plan: list[nn.Module | None] = [None] * n
    j = n
    while j > 0:
        i, name = choice[j]
        for k in range(i, j):
            plan[k] = modules[name] if name is not None else None
        j = i
    return plan


def _snapshot(value: Any) -> tuple[bool, Any]:
    """``(ok, copy)``: tensors cloned, plain values kept; ``ok`` False for anything else."""
    if isinstance(value, Tensor):
        return True, value.detach().clone()
    if isinstance(value, _PLAIN):
        return True, value
    if isinstance(value, (tuple, list)):
        items = [_snapshot(v) for v in value]
        return all(ok for ok, _ in items), type(value)(v for _, v in items)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _snapshot(v) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    return False, None


class _Entered(BaseException):
    """Ends a recording forward once the anchor is entered (user ``except Exception`` lets it by)."""


Recorded = list[tuple[tuple, dict, Any]]


def record_inputs(
    batches: Iterable[Any],
    run: Callable[[Any], Any],
    anchor: nn.Module,
    tag: Callable[[Any], Any] | None = None,
) -> Recorded | None:
    """The anchor's inputs for every batch (cloned), or ``None`` if they cannot be replayed.

    Args:
        batches (Iterable): the calibration batches.
        run (Callable): ``run(batch)`` runs the model's forward on one batch.
        anchor (nn.Module): a submodule called once per forward.
        tag (Callable, optional): ``tag(batch)`` is kept with the batch's inputs (a
            shuffling loader gives another order on the next pass).

    Returns:
        ``[(args, kwargs, tag), ...]``, one per batch.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU()))
        >>> rec = record_inputs([torch.ones(1, 2)], net, net[1])
        >>> rec[0][0][0].shape
        torch.Size([1, 3])
    """
    recorded: Recorded = []
    usable = [True]
    current: list[Any] = [None]

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ok_a, a = _snapshot(args)
        ok_k, k = _snapshot(kwargs)
        usable[0] = usable[0] and ok_a and ok_k
        recorded.append((a, k, current[0]))
        raise _Entered

    handle = anchor.register_forward_pre_hook(enter, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                n = len(recorded)
                current[0] = tag(batch) if tag is not None else None
                try:
                    run(batch)
                except _Entered:
                    pass
                if len(recorded) != n + 1 or not usable[0]:
                    return None  # a batch that does not reach the anchor, or opaque inputs
    finally:
        handle.remove()
    return recorded


def replay(anchor: nn.Module, recorded: Recorded) -> Iterator[tuple[Callable[[], Any], Any]]:
    """``(call, tag)`` per recorded input; ``call()`` runs ``anchor`` on fresh copies of it.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU()))
        >>> rec = record_inputs([torch.ones(1, 2), -torch.ones(1, 2)], net, net[1], tag=len)
        >>> [(tuple(call().shape), tag) for call, tag in replay(net[1], rec)]
        [((1, 3), 1), ((1, 3), 1)]
    """
    for args, kwargs, tag in recorded:

        def call(args: tuple = args, kwargs: dict = kwargs) -> Any:
            _, a = _snapshot(args)
            _, k = _snapshot(kwargs)
            return anchor(*a, **k)

        yield call, tag
