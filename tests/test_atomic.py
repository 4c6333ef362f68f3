"""Crash-safe writes: an interrupted save never destroys the file that was there."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

from torchprune_share import level_prune, load_compressed, save_compressed
from torchprune_share.atomic import (
    atomic_open,
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_text,
)

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    level_prune(model[0], amount=0.5)
    return model


def others(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != name)


def run_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_writes_replace_and_keep_normal_permissions(tmp_path):
    target = tmp_path / "out.bin"
    assert atomic_write_bytes(target, b"old") == 3
    assert atomic_write_bytes(target, bytearray(b"new!")) == 4
    assert target.read_bytes() == b"new!"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert atomic_write_text(tmp_path / "t.md", "é\n") == 2
    assert (tmp_path / "t.md").read_bytes() == "é\n".encode()
    with atomic_open(tmp_path / "t.csv", "w", newline="") as f:
        f.write("a,b\r\n")
    assert (tmp_path / "t.csv").read_bytes() == b"a,b\r\n"
    assert others(tmp_path, "out.bin") == ["t.csv", "t.md"]


def test_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    try:
        atomic_save_figure(fig, tmp_path / "f.png", dpi=20)
        atomic_save_figure(fig, tmp_path / "f.out", format="svg")
        with pytest.raises(ValueError, match="no suffix"):
            atomic_save_figure(fig, tmp_path / "noext")
    finally:
        plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "f.out").read_bytes()[:400]
    assert others(tmp_path, "f.png") == ["f.out"]
    with pytest.raises(TypeError, match="Figure"):
        atomic_save_figure(object(), tmp_path / "f.png")


def test_failure_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.tpsc"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "w") as f:
        f.write("x")
        raise KeyboardInterrupt
    with pytest.raises(TypeError, match="str"):
        atomic_write_text(target, b"bytes")
    assert target.read_bytes() == b"old contents"
    assert others(tmp_path, "model.tpsc") == []


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="path"):
        atomic_write_bytes(3, b"")
    with pytest.raises(TypeError, match="path"):
        atomic_write_bytes(b"/tmp/x", b"")
    with pytest.raises(TypeError, match="data"):
        atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "x", "a"):
        pass
    with pytest.raises(TypeError, match="mode"), atomic_open(tmp_path / "x", 1):
        pass
    with pytest.raises(ValueError, match="text mode"), atomic_open(tmp_path / "x", encoding="u8"):
        pass
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "x", b"")
    assert list(tmp_path.iterdir()) == []


# A child that saves a ~64 MB model over and over: long writes, killed in the middle of one.
SAVER = """
import sys
import torch
from torch import nn
from torchprune_share import save_compressed
from torchprune_share.fileformat.writer import encode_model

torch.manual_seed(1)
big = nn.Linear(4096, 4096)
print(len(encode_model(big)), flush=True)
while True:
    save_compressed(big, sys.argv[1])
"""


def _kill_mid_write(child: subprocess.Popen, directory: Path, full: int, old: int) -> int:
    """SIGKILL ``child`` while a file in ``directory`` is partly written; its size."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        for entry in os.scandir(directory):
            try:
                size = entry.stat().st_size
            except FileNotFoundError:  # renamed away between scandir and stat
                continue
            if 0 < size < full and size != old:
                child.send_signal(signal.SIGKILL)
                child.wait()
                return size
    child.kill()
    raise AssertionError(f"never saw a partial write; child stderr: {child.stderr.read()}")


def test_sigkill_mid_save_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.tpsc"
    old = small_model()
    old_size = save_compressed(old, target)
    old_bytes = target.read_bytes()
    child = run_child(SAVER, str(target))
    full = int(child.stdout.readline())
    assert full > 64 * 2**20
    partial = _kill_mid_write(child, tmp_path, full, old_size)
    assert child.returncode == -signal.SIGKILL
    assert 0 < partial < full
    # The old file (or a complete new one, if an earlier save of the loop finished).
    blob = target.read_bytes()
    assert blob == old_bytes or len(blob) == full
    if blob == old_bytes:
        fresh = load_compressed(small_model(seed=5), target)
        assert torch.equal(fresh[0].weight, old[0].weight)
    else:
        fresh = load_compressed(nn.Linear(4096, 4096), target)
        assert fresh.weight.shape == (4096, 4096)
    # The killed writer's temporary is the only other file; the next save removes it.
    (leftover,) = others(tmp_path, "model.tpsc")
    assert leftover.startswith(".model.tpsc.") and leftover.endswith(".tmp")
    save_compressed(old, target)
    assert others(tmp_path, "model.tpsc") == []
    assert target.read_bytes() == old_bytes


FSIZE_CHILD = """
import resource
import signal
import sys
import torch
from torch import nn
from torchprune_share import save_compressed

if sys.argv[2] == "signal":  # Python ignores SIGXFSZ; restore the default (death)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
try:
    save_compressed(nn.Linear(256, 256), sys.argv[1])  # 257 KiB > 64 KiB
except OSError as err:
    print(type(err).__name__, err.errno)
"""


@pytest.mark.parametrize("how", ["error", "signal"])
def test_file_size_limit_keeps_the_old_file(tmp_path, how):
    target = tmp_path / "model.tpsc"
    old = small_model()
    save_compressed(old, target)
    old_bytes = target.read_bytes()
    child = run_child(FSIZE_CHILD, str(target), how)
    out, err = child.communicate(timeout=120)
    if how == "error":
        assert child.returncode == 0, err
        assert out.split() == ["OSError", "27"]  # EFBIG
        assert others(tmp_path, "model.tpsc") == []  # the temporary was removed
    else:
        assert child.returncode == -signal.SIGXFSZ
        assert len(others(tmp_path, "model.tpsc")) == 1  # the dead writer's temporary
    assert target.read_bytes() == old_bytes
    fresh = load_compressed(small_model(seed=3), target)
    assert torch.equal(fresh[0].weight, old[0].weight)
    save_compressed(old, target)
    assert others(tmp_path, "model.tpsc") == []
