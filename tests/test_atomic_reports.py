"""The report writers (scan CSV/PNG, summary CSV/Markdown, file report CSV/Markdown) are
crash-safe: a write that fails part-way leaves the file already at the path whole.

The failure is real: a child process under ``RLIMIT_FSIZE`` gets ``EFBIG`` once a write
passes the limit, as when a disk fills up. A plain ``open(path, "w")`` would have
truncated the old file before the first byte was written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 4096  # bytes; every new file below is larger, every old one smaller

CHILD = """
import errno
import json
import resource
import sys

import torch
from torch import nn

from torchprune_share import compression_summary
from torchprune_share.fileformat import compression_report
from torchprune_share.results import ScanResult, scan_to_csv, scan_to_png

out = sys.argv[1]
scan = ScanResult({f"layer{i}.weight": {0.5: {"accuracy": 90.0, "loss": 0.3}} for i in range(400)})
net = nn.Sequential(*[nn.Linear(4, 4) for _ in range(100)])
summary, report = compression_summary(net), compression_report(net)
writers = {
    "scan.csv": lambda p: scan_to_csv(scan, p),
    "scan.png": lambda p: scan_to_png(scan, p),
    "summary.csv": summary.to_csv,
    "summary.md": summary.to_markdown,
    "report.csv": report.to_csv,
    "report.md": report.to_markdown,
}
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
errors = {}
for name, write in writers.items():
    try:
        write(f"{out}/{name}")
    except OSError as err:
        errors[name] = errno.errorcode[err.errno]
print(json.dumps(errors))
"""

NAMES = ("scan.csv", "scan.png", "summary.csv", "summary.md", "report.csv", "report.md")


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    old = {name: f"old {name}\n".encode() * 8 for name in NAMES}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path), str(LIMIT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert errors == dict.fromkeys(NAMES, "EFBIG")  # every writer really failed
    for name, data in old.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)  # no temporaries


def test_the_same_writes_succeed_without_the_limit(tmp_path):
    """The child's writes are larger than the limit: without it they replace the files."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path), str(2**40)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
    sizes = {name: (tmp_path / name).stat().st_size for name in NAMES}
    assert min(sizes.values()) > LIMIT, sizes
    assert (tmp_path / "scan.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "scan.csv").read_text().splitlines()[1] == "layer0.weight,0.5,90.0,0.3"
