"""Signals and pipes the way a Unix tool takes them.

SIGINT and SIGTERM stop a command between output lines, never inside one: a handler raises
`KeyboardInterrupt` (`Terminated`, a subclass, for SIGTERM) at once, unless an output line is being
written (`whole_line()`), in which case the line is finished first. The command then prints one
line and exits 130 (SIGINT) or 143 (SIGTERM), its finished work kept. A reader that goes away
(`edgecap caption ... | head -2`) ends the command quietly with 141, as a tool killed by SIGPIPE.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop as for Ctrl-C, with exit status 143."""


_depth = 0
_pending: type[BaseException] | None = None


def _handler(signum: int, frame) -> None:
    global _pending
    exc = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if _depth:
        _pending = exc
        return
    raise exc()


@contextmanager
def whole_line() -> Iterator[None]:
    """Defer SIGINT/SIGTERM until the output written inside the block is complete."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            exc, _pending = _pending, None
            raise exc()


def write_line(line: str, stream=None) -> None:
    """One line and its newline in a single write, flushed, never torn by a signal."""
    stream = stream or sys.stdout
    with whole_line():
        stream.write(line + "\n")
        stream.flush()


@contextmanager
def unix_signals() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the duration of a command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's exit-time flush of the
    dead pipe does not raise again (the Python documentation's recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        sys.stdout = open(os.devnull, "w")


def escape_field(text: str) -> str:
    """A field of a tab-separated line with backslash, tab, CR and LF escaped (`\\\\`, `\\t`, `\\r`, `\\n`)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def tsv_line(fields: list[str]) -> str:
    """Tab-separated fields on one line. As sha256sum does for odd file names, a line in which anything
    had to be escaped starts with a backslash, so a reader knows to unescape it."""
    escaped = [escape_field(f) for f in fields]
    line = "\t".join(escaped)
    return "\\" + line if escaped != fields else line
