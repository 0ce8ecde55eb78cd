"""WebVTT and SubRip subtitles from per-frame captions (used by `edgecap feed --vtt/--srt`).

Consecutive samples with the same caption become one cue. A cue ends where the next sample (with
a different caption) starts; the last cue ends one sampling interval after the last sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def merge_cues(samples: Iterable[tuple[float, str]], every: float) -> list[Cue]:
    """(pts, caption) samples, in any order -> cues with equal consecutive captions merged.

    Empty captions end the running cue but produce no cue of their own.
    """
    ordered = sorted(samples, key=lambda s: s[0])
    cues: list[Cue] = []
    start: float | None = None
    text = ""
    for pts, caption in ordered:
        if start is not None and caption == text:
            continue
        if start is not None and text:
            cues.append(Cue(start, pts, text))
        start, text = pts, caption
    if start is not None and text:
        cues.append(Cue(start, ordered[-1][0] + every, text))
    return cues


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _one_line(text: str) -> str:
    # A blank line ends a cue in both formats, and "-->" is reserved in WebVTT cue text.
    return " ".join(text.split()).replace("-->", "->")


def to_vtt(cues: Sequence[Cue]) -> str:
    out = ["WEBVTT", ""]
    for cue in cues:
        text = _one_line(cue.text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out += [f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}", text, ""]
    return "\n".join(out)


def to_srt(cues: Sequence[Cue]) -> str:
    out: list[str] = []
    for n, cue in enumerate(cues, 1):
        out += [str(n), f"{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}", _one_line(cue.text), ""]
    return "\n".join(out)
