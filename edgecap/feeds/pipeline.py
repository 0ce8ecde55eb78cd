"""The feed pipeline: a decoder thread (sample, dedupe, preprocess) feeding batched model calls."""

from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from .. import pdf
from ..errors import ImageError
from ..decoding import confidence
from ..options import GenerationOptions
from ..preprocess import PreprocessSpec, preprocess_one
from .sources import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEDUPE,
    DEFAULT_EVERY,
    THUMB_SIDE,
    FeedError,
    FeedProblem,
    FeedSource,
    FrameCaption,
    _Info,
    _exc_text,
    _where,
    expand_sources,
    iter_sampled,
)

if TYPE_CHECKING:
    from ..captioner import Captioner


class FeedListener:
    """Callbacks from a feed run, all in the caller's thread (progress display, error reports)."""

    def source_started(self, source: str, expected: int | None) -> None: ...

    def frames_skipped(self, source: str, count: int) -> None: ...  # already recorded (resume)

    def source_finished(self, source: str) -> None: ...

    def problem(self, problem: FeedProblem) -> None: ...



# A frame's result: (caption, score, confidence, parsed answer or None)
Result = tuple[str, float, float | None, Any]


@dataclass
class _Job:
    id: int
    source: str
    frame: int
    pts: float
    pixels: np.ndarray
    size: tuple[int, int] | None = None  # the frame's (width, height): where a parsed answer's boxes lie


@dataclass
class _Repeat:
    source: str
    frame: int
    pts: float
    ref: int | Result  # a job id, or the result an earlier run recorded


@dataclass
class _Event:
    kind: str  # "start", "skip", "end", "crash"
    source: str
    value: Any = None


_DONE = object()


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x32 greyscale thumbnail scaled to 0..1, for dedupe."""
    grey = Image.fromarray(rgb).convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.BOX)
    return np.asarray(grey, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class FeedConfig:
    every: float = DEFAULT_EVERY
    dedupe: float = DEFAULT_DEDUPE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_frames: int | None = None
    fps: float = 1.0
    prefetch: int | None = None  # queue length; None = 4 batches

    def check(self) -> None:
        if not (self.every > 0 and math.isfinite(self.every)):
            raise FeedError(f"--every must be a positive number of seconds, got {self.every}")
        if not (0 <= self.dedupe <= 1):
            raise FeedError(f"--dedupe must be between 0 (off) and 1, got {self.dedupe}")
        if self.batch_size < 1:
            raise FeedError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise FeedError(f"--max-frames must be >= 1, got {self.max_frames}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise FeedError(f"--fps must be positive, got {self.fps}")


class _Producer(threading.Thread):
    """Decodes, samples, dedupes and preprocesses all sources in order into a bounded queue."""

    def __init__(self, captioner: "Captioner", sources: Sequence[FeedSource], cfg: FeedConfig,
                 done: dict[tuple[str, int], FrameCaption]) -> None:
        super().__init__(name="edgecap-feed-decoder", daemon=True)
        self.spec = captioner.preprocess_spec
        self.min_side = captioner.bundle.manifest.architecture.encoder_patch_size
        self.sources, self.cfg, self.done = sources, cfg, done
        self.queue: queue.Queue = queue.Queue(maxsize=cfg.prefetch or 4 * cfg.batch_size)
        self.stop = threading.Event()
        self.next_id = 0

    def put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for src in self.sources:
                if self.stop.is_set():
                    return
                self.run_source(src)
                self.put(_Event("end", src.name))
        except BaseException as exc:  # noqa: BLE001 - a bug: hand it to the consumer to raise
            self.put(_Event("crash", "", exc))
        finally:
            self.put(_DONE)

    def run_source(self, src: FeedSource) -> None:
        job_ids: dict[int, int] = {}  # this source's frame index -> job id, for repeats' references
        for item in sample_source(src, self.cfg, self.spec, self.done, self.stop, self.min_side):
            if isinstance(item, SampledFrame):
                self.next_id += 1
                job_ids[item.frame] = self.next_id
                item = _Job(self.next_id, src.name, item.frame, item.pts, item.pixels, item.size)
            elif isinstance(item, RepeatedFrame):
                item = _Repeat(src.name, item.frame, item.pts, job_ids[item.ref] if isinstance(item.ref, int) else item.ref)
            if not self.put(item):
                return


@dataclass
class SampledFrame:
    """A sampled frame to caption, preprocessed."""

    frame: int
    pts: float
    pixels: np.ndarray
    size: tuple[int, int] | None = None  # the frame's (width, height) before preprocessing


@dataclass
class RepeatedFrame:
    """A sampled frame dedupe found unchanged: it takes the caption (and parsed answer) of the
    source's frame `ref` (a frame index), or the result an earlier run recorded for that frame."""

    frame: int
    pts: float
    ref: int | Result


def sample_source(
    src: FeedSource,
    cfg: FeedConfig,
    spec: PreprocessSpec,
    done: dict[tuple[str, int], FrameCaption] | None = None,
    stop: threading.Event | None = None,
    min_side: int | None = None,
) -> Iterator[SampledFrame | RepeatedFrame | FeedProblem | _Event]:
    """One source's sampled frames in time order, deduped and preprocessed (the decode stage).

    Also yields its problems, a "start" event (expected sample count, or None) and "skip" events
    counting frames `done` already holds. Shared by `run_feed`'s decoder thread and the Ray read tasks.
    `min_side`: warn about frames whose content reaches the encoder thinner than this (its patch size).
    """
    done = done or {}
    # two different pages of text look alike as 32x32 thumbnails: a PDF's pages are never deduped
    dedupe = 0.0 if src.kind == "pdf" else cfg.dedupe
    sampled = iter_sampled(src, cfg.every, cfg.fps, cfg.max_frames)
    skipped = 0
    ref: int | Result | None = None  # what a repeat repeats: a frame index or an earlier run's result
    ref_thumb: np.ndarray | None = None
    try:
        for item in sampled:
            if stop is not None and stop.is_set():
                return
            if isinstance(item, FeedProblem):
                yield item
                continue
            if isinstance(item, _Info):
                expected = None
                if item.duration is not None:
                    expected = int(math.floor(item.duration / cfg.every - 1e-9)) + 1
                if cfg.max_frames is not None:
                    expected = min(expected or cfg.max_frames, cfg.max_frames)
                yield _Event("start", src.name, expected)
                continue
            pts = float(item.pts)
            prev = done.get((src.name, item.index))
            if prev is not None and (prev.repeat or not dedupe):
                skipped += 1
                continue
            try:
                rgb = item.load()
            except (ImageError, ValueError, OSError) as exc:
                yield FeedProblem(src.name, _where(item.index, pts), f"unreadable frame, skipped: {_exc_text(exc)}")
                continue
            thumb = thumbnail(rgb) if dedupe else None
            if prev is not None:  # recorded by an earlier run: only the dedupe reference moves
                skipped += 1
                ref, ref_thumb = (prev.caption, prev.score, prev.confidence, prev.parsed), thumb
                continue
            if skipped:
                yield _Event("skip", src.name, skipped)
                skipped = 0
            if thumb is not None and ref_thumb is not None and ref is not None and \
                    float(np.mean(np.abs(thumb - ref_thumb))) < dedupe:
                yield RepeatedFrame(item.index, pts, ref)
                continue
            name = pdf.page_name(src.name, item.index + 1) if src.kind == "pdf" else f"{src.name} {_where(item.index, pts)}"
            try:  # a document model's geometry can refuse a frame (too elongated for its canvas)
                pixels = preprocess_one(rgb, spec, min_side, source=name)
            except ImageError as exc:
                yield FeedProblem(src.name, _where(item.index, pts), f"{exc.problem}, skipped")
                continue
            ref, ref_thumb = item.index, thumb
            yield SampledFrame(item.index, pts, pixels, (int(rgb.shape[1]), int(rgb.shape[0])))
        if skipped:
            yield _Event("skip", src.name, skipped)
    finally:
        sampled.close()


def run_feed(
    captioner: "Captioner",
    sources: Sequence[FeedSource],
    config: FeedConfig = FeedConfig(),
    options: GenerationOptions | None = None,
    done: dict[tuple[str, int], FrameCaption] | None = None,
    listener: FeedListener | None = None,
) -> Iterator[list[FrameCaption]]:
    """Caption the sampled frames of `sources`: yields lists of results, each source in frame order.

    Each list is a unit worth persisting at once (a model batch plus the repeats it resolves).
    `done` maps (source, frame) to results recorded by an earlier run: those frames are not
    yielded again (they still steer dedupe). Problems go to `listener.problem`; the run goes on.
    """
    config.check()
    settled = captioner.resolve_options(options)  # bad options fail before any decoding
    listener = listener or FeedListener()
    producer = _Producer(captioner, list(sources), config, dict(done or {}))
    hold_limit = max(64, 4 * config.batch_size)  # run a partial batch rather than hold more results
    pending: list[_Job] = []
    order: list[_Job | _Repeat] = []  # results not yet yielded, in stream order
    results: dict[int, Result] = {}
    latest: dict[str, int] = {}

    def run_batch() -> None:
        if not pending:
            return
        pixels = np.stack([j.pixels for j in pending])
        for job, hyps in zip(pending, captioner.decode(captioner.encode(pixels, options), options)):
            best = hyps[0]
            results[job.id] = (captioner.caption_text(best, settled)[0], float(best.score), confidence(best.token_scores),
                               captioner.parse_answer(best.token_ids, job.size, options))
        pending.clear()

    def resolved() -> list[FrameCaption]:
        out: list[FrameCaption] = []
        n = 0
        for n, item in enumerate(order):
            if isinstance(item, _Job):
                if item.id not in results:
                    break
                old = latest.get(item.source)
                if old is not None and old != item.id:
                    results.pop(old, None)
                latest[item.source] = item.id
                text, score, conf, parsed = results[item.id]
                out.append(FrameCaption(item.source, item.frame, item.pts, text, score, False, conf, parsed))
            else:
                if isinstance(item.ref, int):
                    if item.ref not in results:
                        break
                    text, score, conf, parsed = results[item.ref]
                else:
                    text, score, conf, parsed = item.ref
                out.append(FrameCaption(item.source, item.frame, item.pts, text, score, True, conf, parsed))
        else:
            n = len(order)
        del order[:n]
        return out

    producer.start()
    try:
        finished = False
        while not finished:
            try:
                item = producer.queue.get_nowait()
            except queue.Empty:
                ready = resolved()  # don't sit on finished results while the decoder catches up
                if ready:
                    yield ready
                item = producer.queue.get()
            if item is _DONE:
                finished = True
            elif isinstance(item, _Job):
                pending.append(item)
                order.append(item)
            elif isinstance(item, _Repeat):
                order.append(item)
            elif isinstance(item, FeedProblem):
                listener.problem(item)
            elif item.kind == "crash":
                raise item.value
            elif item.kind == "start":
                listener.source_started(item.source, item.value)
            elif item.kind == "skip":
                listener.frames_skipped(item.source, item.value)
            elif item.kind == "end":
                listener.source_finished(item.source)
            if finished or len(pending) >= config.batch_size or (pending and len(order) >= hold_limit):
                run_batch()
                ready = resolved()
                if ready:
                    yield ready
    finally:
        producer.stop.set()
        while producer.is_alive():
            try:
                producer.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        producer.join()


def caption_feed(
    captioner: "Captioner",
    source: str | os.PathLike | Sequence[str | os.PathLike],
    every: float = DEFAULT_EVERY,
    dedupe: float = DEFAULT_DEDUPE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_frames: int | None = None,
    fps: float = 1.0,
    options: GenerationOptions | None = None,
    on_error: Callable[[FeedProblem], None] | None = None,
) -> Iterator[FrameCaption]:
    """Yield a `FrameCaption` per sampled frame of `source` (paths, folders, globs), lazily.

    Problems (unreadable source, decode error) go to `on_error`, and the other sources go on; with
    no `on_error`, a `FeedError` naming them is raised once every source has been processed.
    """
    problems: list[FeedProblem] = []

    class _Collect(FeedListener):
        def problem(self, problem: FeedProblem) -> None:
            (on_error or problems.append)(problem)

    cfg = FeedConfig(every=every, dedupe=dedupe, batch_size=batch_size, max_frames=max_frames, fps=fps)
    for batch in run_feed(captioner, expand_sources(source), cfg, options, listener=_Collect()):
        yield from batch
    if problems:
        raise FeedError("; ".join(map(str, problems)))


