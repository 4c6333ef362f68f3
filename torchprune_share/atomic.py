"""Crash-safe file writes: the old file stays whole until the new one is complete.

Every output file of the package (compressed models, CSV, Markdown, PNG) is written
through :func:`atomic_open`: the data goes to a temporary file in the target's
directory, is flushed and ``fsync``-ed, and then ``os.replace`` (atomic on POSIX and
Windows) puts it in place. A failure anywhere before that (an exception, a full disk,
``RLIMIT_FSIZE``) removes the temporary and leaves the old file as it was. A process
killed outright (``SIGKILL``, power loss) cannot clean up after itself: its temporary
``.<name>.<pid>.<random>.tmp`` stays behind, still beside an intact old file, and the
next write of the same path on this machine removes it once its writer is gone.

Example:
    >>> import csv
    >>> n = atomic_write_bytes("/tmp/atomic-example.bin", b"\\x00\\x01")
    >>> with atomic_open("/tmp/atomic-example.csv", "w", newline="") as f:
    ...     _ = csv.writer(f).writerow(["tensor", "bytes"])
    >>> open("/tmp/atomic-example.csv", newline="").read()
    'tensor,bytes\\r\\n'
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_save_figure", "atomic_write_bytes", "atomic_write_text"]

_MODES = ("w", "wb")


def _check_path(path: Any) -> Path:
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        return Path(path)
    raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform without signals: keep it
    return True


def _remove_stale(target: Path) -> None:
    """Remove temporaries of ``target`` left by writers that were killed."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]{{16}}\.tmp$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            m = pattern.match(entry.name)
            if m and int(m[1]) != os.getpid() and not _alive(int(m[1])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _create_temp(target: Path) -> tuple[int, Path]:
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            # 0o666 honours the umask, so the result has a normal file's permissions.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 64 random bits collided
            continue


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, newline=None
) -> Iterator[IO[Any]]:
    r"""Open ``path`` for writing such that it is replaced only by a complete file.

    Writes go to a temporary file in the same directory; when the ``with`` block ends
    without an exception the file is flushed, ``fsync``-ed and moved onto ``path`` with
    ``os.replace``. On any exception the temporary is removed, ``path`` is untouched,
    and the exception propagates.

    Args:
        path (str or os.PathLike): the file to write; its directory must exist.
        mode (str): ``"wb"`` (binary, the default) or ``"w"`` (text).
        encoding (str, optional): text mode's encoding. Default: ``"utf-8"``.
        newline (str, optional): text mode's newline translation, as for :func:`open`.

    Yields:
        The open temporary file.

    Raises:
        TypeError: ``path`` or ``mode`` is of the wrong type.
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``, or ``encoding`` is given in
            binary mode.
        OSError: the file cannot be written (the old one is left as it was).

    Example:
        >>> with atomic_open("/tmp/atomic-example.md", "w") as f:
        ...     _ = f.write("| a |\n")
        >>> open("/tmp/atomic-example.md").read()
        '| a |\n'
    """
    target = _check_path(path)
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, got {type(mode).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if mode == "wb" and (encoding is not None or newline is not None):
        raise ValueError("encoding and newline apply to text mode ('w') only")
    target = target.absolute()
    _remove_stale(target)
    fd, tmp = _create_temp(target)
    text = {"encoding": encoding or "utf-8", "newline": newline} if mode == "w" else {}
    try:
        f = open(fd, mode, **text)  # closed by the with below, before the rename
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> int:
    """Write ``data`` to ``path`` through :func:`atomic_open`.

    Args:
        path (str or os.PathLike): the file to write.
        data (bytes-like): its new contents.

    Returns:
        The number of bytes written.

    Raises:
        TypeError: ``data`` is not bytes-like, or ``path`` is of the wrong type.

    Example:
        >>> atomic_write_bytes("/tmp/atomic-example.bin", b"abc")
        3
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None
    with atomic_open(path, "wb") as f:
        f.write(view)
    return view.nbytes


def atomic_write_text(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", newline: str | None = None
) -> int:
    """Write ``text`` to ``path`` through :func:`atomic_open`.

    Args:
        path (str or os.PathLike): the file to write.
        text (str): its new contents.
        encoding (str): Default: ``"utf-8"``.
        newline (str, optional): newline translation, as for :func:`open`.

    Returns:
        The number of characters written.

    Raises:
        TypeError: ``text`` is not a str, or ``path`` is of the wrong type.

    Example:
        >>> atomic_write_text("/tmp/atomic-example.md", "# title\\n")
        8
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with atomic_open(path, "w", encoding=encoding, newline=newline) as f:
        return f.write(text)


def atomic_save_figure(figure: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure to ``path`` through :func:`atomic_open`.

    The format comes from ``savefig_kwargs["format"]`` or else from the suffix of
    ``path`` (``.png``, ``.pdf``, ``.svg``, ...).

    Args:
        figure (matplotlib.figure.Figure): the figure.
        path (str or os.PathLike): the file to write.
        **savefig_kwargs: passed to ``figure.savefig`` (``dpi``, ``bbox_inches``, ...).

    Raises:
        TypeError: ``figure`` has no ``savefig``, or ``path`` is of the wrong type.
        ValueError: no format is given and ``path`` has no suffix.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig = plt.figure(figsize=(1, 1))
        >>> atomic_save_figure(fig, "/tmp/atomic-example.png")
        >>> open("/tmp/atomic-example.png", "rb").read(4)
        b'\\x89PNG'
        >>> plt.close(fig)
    """
    if not callable(getattr(figure, "savefig", None)):
        raise TypeError(f"figure must be a matplotlib Figure, got {type(figure).__name__}")
    target = _check_path(path)
    kwargs = dict(savefig_kwargs)
    if "format" not in kwargs:
        if not target.suffix:
            raise ValueError(f"path {str(target)!r} has no suffix; pass format=")
        kwargs["format"] = target.suffix[1:].lower()
    with atomic_open(target, "wb") as f:
        figure.savefig(f, **kwargs)
