"""Sequential calibration in one forward per batch: the batches' forwards run in lockstep.

Each calibration batch's forward runs in a thread of its own and pauses when it reaches
the next layer group, before the group's first layer runs. Once every batch has paused
there (or finished without reaching it), the group's statistics are gathered from the
paused inputs, in batch order, and the group is compressed and staged; then the forwards
go on, through the compressed group, to the next. Every layer thus sees the errors of the
groups before it, as in sequential GPTQ, at the cost of one forward per batch in all (a
forward per group and batch grows with depth squared).

Only one thread computes at a time (they pass one lock, as coroutines would): the work
is the same as a serial run's, on as many torch threads, and the results do not depend
on scheduling. While paused, the batches' activations stay alive, as in GPTQ's layer-wise
loop; the caller limits the batch count. The forwards run with gradients off; other
thread-local modes of the caller (``torch.autocast``, ``torch.inference_mode``) do not
reach the worker threads: a ``forward`` that needs them sets them itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Paused", "run_lockstep"]


class _Halt(BaseException):
    """Ends a paused forward (the work is done, or another batch failed)."""


class Paused:
    """The inputs that the paused forwards hold at one group: ``inputs[b]`` of batch ``b``
    (``None`` where batch ``b`` did not reach the group)."""

    def __init__(self, n: int) -> None:
        self.inputs: list[Tensor | None] = [None] * n


def run_lockstep(
    batches: Sequence[Any],
    run: Callable[[Any], Any],
    modules: Sequence[Sequence[nn.Module]],
    first_input: Callable[[tuple, dict], Tensor | None],
    on_group: Callable[[int, Paused], None],
) -> None:
    """Run ``run(batch)`` for every batch, pausing all at each group for ``on_group``.

    Args:
        batches: the calibration batches.
        run (Callable): ``run(batch)``, one forward (called in a worker thread, with
            gradients off).
        modules: the modules of each group, groups in execution order.
        first_input (Callable): ``first_input(args, kwargs)`` -> the tensor a module reads.
        on_group (Callable): ``on_group(index, paused)``, called in the calling thread
            with every forward paused at group ``index``; it stages the group's
            compressed values, which the forwards then run with.

    Raises:
        Whatever a forward or ``on_group`` raises; the other forwards are stopped first.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> seen = []
        >>> run_lockstep([torch.ones(1, 2), torch.zeros(1, 2)], net, [[net[0]], [net[2]]],
        ...              lambda a, k: a[0], lambda i, p: seen.append((i, len(p.inputs))))
        >>> seen
        [(0, 2), (1, 2)]
    """
    n = len(batches)
    groups = len(modules)
    group_of = {id(m): gi for gi, ms in enumerate(modules) for m in ms}
    baton = threading.Condition()
    committed = [0]  # groups 0..committed-1 are staged
    # Where each forward is: None while it runs, the group it is paused at, or ``groups``
    # once it has finished.
    pos: list[int | None] = [None] * n
    failure: list[BaseException | None] = [None]
    paused = [Paused(n) for _ in range(groups)]
    local = threading.local()

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        gi = group_of[id(module)]
        if gi < local.next:
            return  # a later layer of a group already passed
        b = local.batch
        paused[gi].inputs[b] = first_input(args, kwargs)
        pos[b] = gi
        baton.notify_all()
        while committed[0] <= gi and failure[0] is None:
            baton.wait()
        pos[b], local.next = None, gi + 1
        if failure[0] is not None or gi == groups - 1:
            raise _Halt  # nothing after the last group is needed

    def worker(b: int) -> None:
        local.batch, local.next = b, 0
        with baton:
            try:
                if failure[0] is not None:
                    return  # another batch failed before this one started
                with torch.no_grad():
                    run(batches[b])
            except _Halt:
                pass
            except BaseException as err:  # handed to the calling thread
                if failure[0] is None:
                    failure[0] = err
            finally:
                pos[b] = groups
                baton.notify_all()

    def all_at(gi: int) -> bool:
        return all(p is not None and p >= gi for p in pos)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for ms in modules for m in ms]
    threads = [threading.Thread(target=worker, args=(b,), daemon=True) for b in range(n)]
    try:
        with baton:
            try:
                for t in threads:
                    t.start()
                for gi in range(groups):
                    while failure[0] is None and not all_at(gi):
                        baton.wait()
                    if failure[0] is not None:
                        break
                    on_group(gi, paused[gi])
                    paused[gi] = Paused(0)  # the inputs are no longer needed
                    committed[0] = gi + 1
                    baton.notify_all()
            except BaseException as err:  # on_group failed, or an interrupt: stop them all
                if failure[0] is None:
                    failure[0] = err
            baton.notify_all()
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join()
    finally:
        for h in handles:
            h.remove()
    if failure[0] is not None:
        raise failure[0]
