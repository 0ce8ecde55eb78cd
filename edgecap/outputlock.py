"""One writer per output: an exclusive OS lock held for a whole feed run.

Two `edgecap feed` runs on one `--out` would both append (600 frames became 1,200 lines) or mix
settings. The lock is `fcntl.flock` on a lock file beside the output: the kernel drops it when the
process ends however it ends (SIGKILL included), so a killed run never leaves a stale lock for a
resume to clean up, as a pid file would. The lock file itself is never deleted: unlinking it while
another process has it open would let a third create a fresh one and lock that, and two runs would
write again. Its content is the holder's pid, for the refusal message only.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from .errors import EdgecapError

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no flock; feeds still run, unguarded (said once, below)
    fcntl = None  # type: ignore[assignment]


class OutputBusyError(EdgecapError):
    """Another process is writing the same output (exit 2)."""


class OutputLock:
    """`with OutputLock(out, lock_file):` holds the lock or raises OutputBusyError naming `out` and
    the other run's pid. `what` names the writers in the message ("edgecap feed")."""

    def __init__(self, output: str | os.PathLike, lock_file: str | os.PathLike, what: str = "edgecap feed") -> None:
        self.output, self.lock_file, self.what = str(output), Path(lock_file), what
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            log.warning("%s: no file locking on this platform; make sure no other run writes it", self.output)
            return
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.lock_file, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EdgecapError(f"{self.lock_file}: is a symbolic link; refusing to follow it "
                                   "(remove it: edgecap makes this lock file itself)") from None
            raise EdgecapError(f"{self.lock_file}: cannot create the lock file for {self.output} "
                               f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "another process"
                raise OutputBusyError(f"{self.output}: another {self.what} ({who}) is writing it; wait for that "
                                      "run to end, or give this one another output") from None
            raise EdgecapError(f"{self.lock_file}: cannot lock ({exc.strerror or exc})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
