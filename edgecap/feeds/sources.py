"""Feed sources: video files (PyAV, imported lazily), frame folders and PDFs (pypdfium2, imported
lazily; one frame per page), as decoded-frame streams."""

from __future__ import annotations

import glob
import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import EdgecapError, ImageError
from .. import pdf
from ..inputs import IMAGE_EXTENSIONS  # one list for `caption` and `feed`
from ..extras import install_command
from ..preprocess import load_image

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
DEFAULT_EVERY = 1.0
DEFAULT_DEDUPE = 0.01
DEFAULT_BATCH_SIZE = 8
THUMB_SIDE = 32


class FeedError(EdgecapError):
    """A feed run that cannot start or whose sources failed (the message names them)."""


@dataclass(frozen=True)
class FrameCaption:
    source: str
    frame: int  # index of the frame in decode order (the frame number in the video / folder)
    pts: float  # presentation time, seconds
    caption: str
    score: float
    repeat: bool  # True: deduped, the caption is that of the source's last captioned frame
    confidence: float | None = None  # Caption.confidence: exp(mean token log-prob); None in older outputs
    # Caption.parsed: the answer as a structure (Florence-2's boxes in the frame's pixels, Donut's JSON)
    parsed: Any = None


@dataclass(frozen=True)
class FeedSource:
    name: str  # as recorded in the output ("source"): the resolved path, so any cwd finds it again
    kind: str  # "video", "frames" or "pdf" (a frame per page)
    paths: tuple[str, ...]  # one video file or PDF, or the frame images in order
    problem: str | None = None  # set when the source cannot be used at all (not found...)


@dataclass(frozen=True)
class FeedProblem:
    source: str
    where: str | None  # "frame 12 (pts 3.000 s)", or None for the whole source
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.where}: {self.message}" if self.where else f"{self.source}: {self.message}"


# --- expansion --------------------------------------------------------------------------------


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def resolve_name(pattern: str) -> str:
    """The absolute, symlink-free form of a path or glob pattern (the part before the first wildcard).

    Sources are recorded and matched under this name: `clip.mp4` typed in `cam1/` and `cam1/clip.mp4`
    typed one level up are the same source, and resume finds it from any working directory.
    """
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return os.path.join(os.path.realpath(os.path.join(*parts[:i]) if i else os.curdir), *parts[i:])
    return os.path.realpath(pattern)


def _dir_sources(path: str) -> list[FeedSource]:
    name = resolve_name(path)
    files = sorted(os.path.join(name, p.name) for p in Path(name).iterdir() if p.is_file())
    images = [f for f in files if _ext(f) in IMAGE_EXTENSIONS]
    if images:
        return [FeedSource(name, "frames", tuple(images))]
    others = [FeedSource(f, _kind(f), (f,)) for f in files if _ext(f) in VIDEO_EXTENSIONS or pdf.is_pdf(f)]
    if others:
        return others
    return [FeedSource(name, "frames", (), "directory contains no image, video or PDF files")]


def _kind(path: str) -> str:
    """The kind of a single-file source."""
    if _ext(path) in IMAGE_EXTENSIONS:
        return "frames"
    return "pdf" if pdf.is_pdf(path) else "video"


def expand_sources(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[FeedSource]:
    """Video files, frame folders (images sorted by name) and globs -> sources, in the order given.

    A folder with image files is one frame source; a folder without gives one source per video and
    PDF; the image files a glob matches form one frame source named by the pattern. A PDF's pages
    are its frames, in order (`frame` 2 is `paper.pdf#page=3`).
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    out: list[FeedSource] = []
    for pattern in map(os.fspath, patterns):
        if os.path.isdir(pattern):
            out += _dir_sources(pattern)
        elif os.path.isfile(pattern):
            path = resolve_name(pattern)
            out.append(FeedSource(path, _kind(path), (path,)))
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            images = [m for m in matches if os.path.isfile(m) and _ext(m) in IMAGE_EXTENSIONS]
            for m in matches:
                if os.path.isdir(m):
                    out += _dir_sources(m)
                elif os.path.isfile(m) and m not in images:
                    out.append(FeedSource(resolve_name(m), _kind(m), (resolve_name(m),)))
            if images:
                out.append(FeedSource(resolve_name(pattern), "frames", tuple(map(resolve_name, images))))
            if not matches:
                out.append(FeedSource(resolve_name(pattern), "video", (), "no files match this pattern"))
        else:
            out.append(FeedSource(resolve_name(pattern), "video", (), "file not found"))
    seen: set[str] = set()
    return [s for s in out if not (s.name in seen or seen.add(s.name))]


def relative_layout(sources: Sequence[FeedSource]) -> dict[str, str]:
    """Each source's path relative to the deepest folder that holds them all, file extension kept.

    `/a/cam1/clip.mp4` and `/a/cam2/clip.mp4` -> `cam1/clip.mp4`, `cam2/clip.mp4`; a single source is
    its own file name; a frame folder is its folder name. Wildcards of a glob source become `_`.
    Per-source outputs (subtitles, the Ray path's result files) are named from this, so two sources
    can never share an output and the layout mirrors the archive's.
    """
    if not sources:
        return {}
    root = os.path.commonpath([os.path.dirname(s.name) for s in sources])
    layout = {s.name: re.sub(r"[*?\[\]]", "_", os.path.relpath(s.name, root)) for s in sources}
    # `a*.png` and `a?.png` both become `a_.png`: such names get a digest of the source added
    taken = Counter(layout.values())
    return {name: rel if taken[rel] == 1 else f"{rel}.{hashlib.sha1(name.encode()).hexdigest()[:8]}"
            for name, rel in layout.items()}


# --- readers: (index, pts, loader) per decoded frame ------------------------------------------


@dataclass
class _Decoded:
    index: int
    pts: Fraction
    load: Callable[[], np.ndarray]  # -> HxWx3 uint8 RGB; only called for sampled frames


@dataclass
class _Info:
    duration: float | None


def _where(index: int, pts: float | None) -> str:
    return f"frame {index}" + (f" (pts {pts:.3f} s)" if pts is not None else "")


def _exc_text(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _read_video(src: FeedSource) -> Iterator[_Decoded | _Info | FeedProblem]:
    try:
        import av
        import av.video.reformatter
    except ImportError:
        yield FeedProblem(src.name, None, f"video needs PyAV: {install_command('feeds')}")
        return
    try:
        container = av.open(src.paths[0], metadata_errors="ignore")
    except Exception as exc:  # noqa: BLE001 - any open failure is this source's problem
        hint = " (not a video file, or a truncated/corrupt one)" if "Invalid data" in str(exc) else ""
        yield FeedProblem(src.name, None, f"cannot open as video{hint}: {_exc_text(exc)}")
        return
    with container:
        if not container.streams.video:
            yield FeedProblem(src.name, None, "no video stream in this file")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # One reformatter per source keeps its swscale context: 3-7x faster than frame.to_ndarray().
        to_rgb = av.video.reformatter.VideoReformatter()
        rate = stream.average_rate or stream.guessed_rate or 25
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if duration is None and container.duration and len(container.streams) == 1:
            duration = container.duration / 1_000_000
        yield _Info(duration)
        index, last_pts, errors = 0, None, 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001
                yield FeedProblem(src.name, f"after {_where(index, last_pts)}", f"read error, source stopped: {_exc_text(exc)}")
                return
            try:
                frames = packet.decode()
            except Exception as exc:  # noqa: BLE001
                errors += 1
                ppts = float(packet.pts * packet.time_base) if packet.pts is not None and packet.time_base else last_pts
                yield FeedProblem(src.name, _where(index, ppts), f"decode error, skipped to the next decodable frame: {_exc_text(exc)}")
                continue
            for frame in frames:
                if frame.pts is not None and frame.time_base:
                    pts = Fraction(frame.pts) * Fraction(frame.time_base)
                else:
                    pts = Fraction(index) / Fraction(rate)
                last_pts = float(pts)
                yield _Decoded(index, pts, lambda f=frame: to_rgb.reformat(f, format="rgb24").to_ndarray())
                index += 1
        declared = stream.frames or 0
        short = declared > 1 and index < declared - 1
        if not short and duration and index and last_pts is not None:
            short = last_pts + 2 / float(rate) < duration - 1.0
        if short and not errors:
            total = f"{declared} frames" if declared > 1 else f"{duration:.3f} s"
            yield FeedProblem(src.name, f"after {_where(index - 1, last_pts)}", f"video ends early (header says {total}): truncated file?")


def _read_pdf(src: FeedSource, fps: Fraction) -> Iterator[_Decoded | _Info | FeedProblem]:
    """A PDF's pages as frames at `fps` (like a frame folder), rendered as Nougat renders them."""
    try:
        count = pdf.page_count(src.paths[0])
    except ImageError as exc:
        yield FeedProblem(src.name, None, exc.problem)
        return
    yield _Info(count / fps)
    for i in range(count):
        yield _Decoded(i, Fraction(i) / fps, lambda page=i + 1: np.asarray(pdf.render_page(src.paths[0], page)))


def _read_frames(src: FeedSource, fps: Fraction) -> Iterator[_Decoded | _Info | FeedProblem]:
    yield _Info(len(src.paths) / fps if src.paths else None)
    for i, path in enumerate(src.paths):
        yield _Decoded(i, Fraction(i) / fps, lambda p=path: np.asarray(load_image(p)))




def iter_sampled(src: FeedSource, every: float, fps: float = 1.0,
                 max_frames: int | None = None) -> Iterator[_Decoded | _Info | FeedProblem]:
    """The sampled frames of one source (plus its _Info and problems), in decode order.

    Sample times are the grid 0, every, 2*every...: a frame is taken when its pts is at or past
    the next grid time not yet covered; at most `max_frames` frames.
    """
    if src.problem:
        yield FeedProblem(src.name, None, src.problem)
        return
    step = Fraction(repr(float(every)))
    rate = Fraction(repr(float(fps)))
    if src.kind == "video":
        reader = _read_video(src)
    elif src.kind == "pdf":
        reader = _read_pdf(src, rate)
    else:
        reader = _read_frames(src, rate)
    next_t: Fraction | None = None
    sampled = 0
    try:
        for item in reader:
            if isinstance(item, _Decoded):
                if max_frames is not None and sampled >= max_frames:
                    return
                if next_t is not None and item.pts < next_t:
                    continue
                next_t = (math.floor(item.pts / step) + 1) * step
                sampled += 1
            yield item
    finally:
        reader.close()
