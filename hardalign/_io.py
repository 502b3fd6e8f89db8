"""Atomic file writes: the one helper every writer of the toolkit uses.

A file is written to a temporary name in the destination's directory, flushed and (by default)
``fsync``-ed, then moved over the destination with ``os.replace`` (atomic on POSIX and Windows
within one file system), and the directory entry is synced. A crash at any point leaves either
the previous file or the new one, never a truncated file; on an exception the temporary file is
removed and the destination is untouched.

Example:
    >>> import tempfile, os
    >>> import numpy as np
    >>> with tempfile.TemporaryDirectory() as d:
    ...     atomic_write_text(os.path.join(d, "a.txt"), "hello\\n")
    ...     with atomic_path(os.path.join(d, "b.npy")) as tmp:
    ...         np.save(tmp, np.zeros(2))   # any writer that takes a path (torch.save, soundfile)
    ...     sorted(os.listdir(d))
    ['a.txt', 'b.npy']
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_directory", "temp_prefix"]


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of the temporary files written for ``path`` (``.NAME.``): stale ones can be found by it."""
    return f".{Path(path).name}."


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it replaces ``path``.

    For writers that take a path or open it themselves (``torch.save``, ``np.save``,
    ``soundfile.write``). The temporary file already exists (empty) when the block starts and
    ends with the destination's suffix (``.b.npy.XXXX.tmp.npy``), so writers that pick the format
    from the name pick the right one.

    Args:
        path: the destination; its directory is created if needed.
        fsync: sync the data and the directory entry (off for caches that can be rebuilt).
        keep_suffix: end the temporary name with the destination's suffix (for writers that
            choose the format by it); otherwise it ends in ``.tmp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the destination's suffix last: np.save and soundfile choose the format by it
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp" + (path.suffix if keep_suffix else ""), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        if fsync:
            _fsync_file(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        # whatever happened (disk full, KeyboardInterrupt), the destination is untouched
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if fsync:
        fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync, keep_suffix=False) as tmp:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
            handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
