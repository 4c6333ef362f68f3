"""Running a test body on 2 CPU processes with torch.distributed (gloo), bounded in time."""

from __future__ import annotations

import contextlib
import datetime
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(rank: int, world: int, port: int, timeout_s: float) -> Iterator[None]:
    """Join a gloo process group on 127.0.0.1 for the ``with`` body (one torch thread)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
        # No rank may tear the group down while another still talks to it: gloo aborts
        # the process ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(worker: Callable[..., None], args: tuple, world: int, timeout_s: float) -> None:
    """Spawn ``worker(rank, *args)`` on ``world`` processes; fail the test past the deadline.

    A worker's exception is re-raised here; stragglers are killed either way.
    """
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    ctx = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} ranks did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
