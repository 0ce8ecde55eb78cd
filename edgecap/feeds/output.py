"""The feed output: JSON lines appended one batch per write, fsync'd, resumable after a kill."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from .sources import FeedError, FrameCaption, _exc_text

log = logging.getLogger(__name__)

RECORD_KEYS = ("source", "frame", "pts", "caption", "score", "repeat")


def load_records(path: str | os.PathLike, repair: bool = True) -> list[FrameCaption]:
    """Read a feed output file; a torn last line (killed mid-write) is truncated away if `repair`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FeedError(f"{path}: cannot read the output file: {_exc_text(exc)}") from None
    records: list[FrameCaption] = []
    good = 0  # bytes of complete, valid lines
    lines = data.split(b"\n")
    for n, line in enumerate(lines):
        last = n >= len(lines) - 2  # the final line, or the fragment after the final newline
        complete = n < len(lines) - 1
        if not line.strip():
            if complete:
                good += len(line) + 1
            continue
        try:
            obj = json.loads(line) if complete else None
            if obj is None:
                raise ValueError("no newline")
            records.append(FrameCaption(str(obj["source"]), int(obj["frame"]), float(obj["pts"]),
                                        str(obj["caption"]), float(obj["score"]), bool(obj["repeat"])))
            good += len(line) + 1
        except (ValueError, KeyError, TypeError) as exc:
            if not last:
                raise FeedError(f"{path}: line {n + 1} is not a feed record ({_exc_text(exc)}); "
                                "refusing to append to a damaged file") from None
            if repair:
                log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", path, len(data) - good)
                os.truncate(path, good)
            break
    return records


def encode_records(records: Iterable[FrameCaption], extra: dict[str, Any]) -> bytes:
    return "".join(json.dumps({**{k: getattr(r, k) for k in RECORD_KEYS}, **extra}) + "\n" for r in records).encode()


def append_all(fd: int, data: bytes) -> None:
    """Write `data` with as few write calls as the OS allows (normally one), then fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
