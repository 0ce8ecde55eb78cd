"""Progress on long work: one updating line on a terminal, plain periodic lines in a log.

Shared by `edgecap caption`, `edgecap feed` and the Ray driver; they decide what the line says.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO


def format_eta(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * min(done, total) / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class StatusLine:
    """A status line on `stream`.

    On a terminal it is redrawn in place at most every `tty_interval` seconds; elsewhere (a log
    file, a pipe) it is printed as a line every `interval` seconds, or never when `log_lines` is
    False. `print` writes a permanent line, clearing the status line first.
    """

    def __init__(self, stream: TextIO, prefix: str = "edgecap: ", quiet: bool = False, interval: float = 10.0,
                 tty: bool | None = None, log_lines: bool = True, tty_interval: float = 0.2) -> None:
        self.stream, self.prefix, self.quiet = stream, prefix, quiet
        self.interval, self.tty_interval, self.log_lines = interval, tty_interval, log_lines
        self.tty = bool(tty if tty is not None else getattr(stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.last = float("-inf")
        self.shown = False

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return not self.quiet and now - self.last >= (self.tty_interval if self.tty else self.interval)

    def update(self, text: str, now: float | None = None, force: bool = False) -> None:
        now = time.monotonic() if now is None else now
        if not (force or self.due(now)) or self.quiet:
            return
        self.last = now
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\x1b[K" + (self.prefix + text)[:width])
            self.shown = True
            self.stream.flush()
        elif self.log_lines:
            self.print(text)

    def print(self, line: str) -> None:
        self.clear()
        self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    close = clear
