"""Writing files that cannot be redirected: every file edgecap writes goes through here.

A file is written to a temporary name inside its target folder and renamed over the target: the
rename replaces whatever sits at the target (a symbolic link planted there included) instead of
following it, and a crash leaves either the old file or the whole new one. Files appended to (feed
outputs) are opened with O_NOFOLLOW. Names derived from inputs go through `safe_filename`, so no
input name can leave the folder or make an unwritable name.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

_UNSAFE = re.compile(r"[^\w.-]+")


def safe_filename(name: str, default: str = "file", max_length: int = 120) -> str:
    """`name` as one plain file name: runs of characters other than letters, digits, `_`, `.` and `-`
    become `_`, leading dots go (no `.`, `..` or hidden files), at most `max_length` characters."""
    cleaned = _UNSAFE.sub("_", name).lstrip(".")[:max_length].rstrip(".")
    return cleaned or default


def append_all(fd: int, data: bytes, sync: bool = True) -> None:
    """Write `data` with as few write calls as the OS allows (normally one), then fsync (if `sync`)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if sync:
        os.fsync(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the complete new one, and
    a symbolic link at `path` is replaced, never followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            append_all(fd, data)
        finally:
            os.close(fd)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; results are read by others, as open() would allow
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def open_append(path: str | os.PathLike) -> int:
    """A descriptor appending to `path` (created if missing); a symbolic link there is refused
    (OSError with errno ELOOP), not followed to wherever it points."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)


def is_symlink_refusal(exc: OSError) -> bool:
    return exc.errno == errno.ELOOP


def sync_dir(folder: str | os.PathLike) -> None:
    """fsync a directory so a rename into it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
