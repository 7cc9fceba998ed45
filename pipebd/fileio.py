"""The one atomic file writer: a reader sees the old file or the whole new one, never half of it.

Every file pipebd writes in place (CSVs, traces, checkpoints, fingerprints, journals) goes
through :func:`atomic_write`: the content is written to a temporary file in the destination's
own directory (so the rename never crosses a file system), given the mode a plain
``open(path, "w")`` would have (:func:`file_mode`; ``mkstemp`` makes 0600 files), optionally
``fsync``-ed, then renamed over ``path`` with :func:`os.replace`. If writing fails, the
temporary file is removed and ``path`` is untouched. :func:`atomic_write_text` and
:func:`atomic_write_bytes` are the common cases; anything else (``torch.save``, a DataFrame's
``to_csv``) passes a callback that writes to the open file object::

    atomic_write(path, lambda f: torch.save(obj, f), binary=True, fsync=True)

This module imports nothing of ours and not torch (the CSV readers and plots stay light).
Concurrent writers of one file still need a lock around read-modify-write
(:func:`pipebd.metrics.append_rows` takes one); the rename only makes each write whole.
"""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable

__all__ = ["file_mode", "atomic_write", "atomic_write_text", "atomic_write_bytes"]


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, write: Callable[[IO[Any]], Any], *, binary: bool = False, fsync: bool = False,
                 newline: str | None = None) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``binary``: ``f`` is opened ``"wb"``, else ``"w"`` (UTF-8; ``newline`` as :func:`open`'s).
    ``fsync``: flush the file to the disk before the rename and the directory after it, so the
    new file survives a crash of the machine too (checkpoints); without it, only a crash of the
    process is covered. The parent directory is created if missing.
    """
    path = os.path.abspath(path)
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding="utf-8", newline=newline)
        with f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(d)


def atomic_write_text(path: str, text: str, *, fsync: bool = False, newline: str | None = None) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text), fsync=fsync, newline=newline)


def atomic_write_bytes(path: str, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data), binary=True, fsync=fsync)


def fsync_path(path: str) -> None:
    """Flush ``path``'s data to disk (e.g. pages written through a shared memory map)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(d: str) -> None:
    """Make a rename in ``d`` durable (best effort: some file systems refuse to fsync a directory)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
