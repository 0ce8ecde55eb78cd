"""`edgecap feed`: caption camera feeds into a resumable JSON-lines file (and subtitles).

Exit codes: 0 every source done; 1 some source failed (the others were still captioned); 2 usage
or bundle error; 130 interrupted (everything finished before Ctrl-C is on disk: rerun to go on).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TextIO

from ..cliargs import EXIT_CODES_HELP, EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_OK, add_generation_args, add_model_args, generation_options
from ..progress import StatusLine, format_eta
from .output import append_all, encode_records, load_records
from .pipeline import FeedConfig, FeedListener, run_feed
from .sources import DEFAULT_BATCH_SIZE, DEFAULT_DEDUPE, DEFAULT_EVERY, FeedError, FeedProblem, FeedSource, FrameCaption, expand_sources



def add_feed_parser(sub) -> argparse.ArgumentParser:
    """Register `edgecap feed` on the top-level parser's subparsers."""
    p = sub.add_parser(
        "feed",
        help="caption video files and frame folders over time into JSON lines (needs edgecap[feeds] for video)",
        description="Caption one frame every --every seconds of each source (video files, folders of frames "
        "sorted by name, globs) into JSON lines. Rerunning with the same --out continues where a killed or "
        "interrupted run stopped. A bad source is reported on stderr and the others are still captioned.",
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video files, folders of frames, or glob patterns")
    p.add_argument("--out", required=True, metavar="FILE", help="JSON-lines output; appended to and resumed from")
    p.add_argument("--every", type=float, default=DEFAULT_EVERY, metavar="SECONDS",
                   help=f"sample one frame every SECONDS of presentation time (default: {DEFAULT_EVERY:g})")
    p.add_argument("--dedupe", type=float, default=DEFAULT_DEDUPE, metavar="THRESHOLD",
                   help="reuse the last caption when the 32x32 grey thumbnail changed by less than THRESHOLD "
                   f"(mean absolute difference, 0..1; default: {DEFAULT_DEDUPE:g}; 0 = off)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"frames per model call, across sources (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-frames", type=int, metavar="N", help="sample at most N frames per source")
    p.add_argument("--fps", type=float, default=1.0, metavar="F", help="frame rate of frame folders (default: 1)")
    p.add_argument("--vtt", metavar="DIR", help="write a WebVTT file per video source into DIR")
    p.add_argument("--srt", metavar="DIR", help="write a SubRip file per video source into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress or summary (problems are still reported)")
    add_model_args(p)
    add_generation_args(p, alternatives=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return p


class Progress(FeedListener):
    """One updating line on a terminal, a log line every `interval` seconds otherwise."""

    def __init__(self, stream: TextIO, quiet: bool = False, interval: float = 10.0, tty: bool | None = None) -> None:
        self.status = StatusLine(stream, quiet=quiet, interval=interval, tty=tty)
        self.status.last = self.t0 = time.monotonic()
        self.quiet, self.tty = quiet, self.status.tty
        self.written = self.repeats = self.skipped = 0
        self.done: dict[str, int] = defaultdict(int)
        self.expected: dict[str, int | None] = {}
        self.current: str | None = None
        self.problems: dict[str, list[FeedProblem]] = {}

    def _print(self, line: str) -> None:
        self.status.print(line)

    def source_started(self, source: str, expected: int | None) -> None:
        self.expected[source] = expected
        if self.current is None:
            self.current = source

    def frames_skipped(self, source: str, count: int) -> None:
        self.done[source] += count
        self.skipped += count

    def source_finished(self, source: str) -> None:
        pass

    def problem(self, problem: FeedProblem) -> None:
        self.problems.setdefault(problem.source, []).append(problem)
        self._print(str(problem))

    def frames_written(self, batch: list[FrameCaption]) -> None:
        for r in batch:
            self.done[r.source] += 1
            self.repeats += r.repeat
        self.written += len(batch)
        if batch:
            self.current = batch[-1].source
        now = time.monotonic()
        if self.status.due(now):
            self.show(now)

    def rate(self, now: float | None = None) -> float:
        return self.written / max(1e-9, (now or time.monotonic()) - self.t0)

    def line(self, now: float | None = None) -> str:
        rate = self.rate(now)
        text = f"feed: {self.written + self.skipped} frames, {rate:.1f} frames/s"
        src = self.current
        if src is not None:
            exp = self.expected.get(src)
            name = os.path.basename(src) or src
            if exp:
                done = min(self.done[src], exp)
                text += f" | {name} {done}/{exp}"
                if rate > 0:
                    text += f", ETA {format_eta((exp - done) / rate)}"
            else:
                text += f" | {name} {self.done[src]}"
        return text

    def show(self, now: float | None = None) -> None:
        self.status.update(self.line(now), now, force=True)

    def close(self) -> None:
        self.status.close()


def _subtitle_names(sources: list[FeedSource]) -> dict[str, str]:
    names: dict[str, str] = {}
    used: set[str] = set()
    for s in sources:
        if s.kind != "video" or s.problem:
            continue
        stem, n = Path(s.name).stem or "video", 1
        name = stem
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        names[s.name] = name
    return names


def write_subtitles(out: str, sources: list[FeedSource], every: float, vtt: str | None, srt: str | None) -> list[str]:
    from ..subtitles import merge_cues, to_srt, to_vtt

    by_source: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in load_records(out, repair=False):
        by_source[r.source].append((r.pts, r.caption))
    written = []
    for source, stem in _subtitle_names(sources).items():
        if not by_source.get(source):
            continue
        cues = merge_cues(by_source[source], every)
        for folder, ext, render in ((vtt, ".vtt", to_vtt), (srt, ".srt", to_srt)):
            if folder:
                path = Path(folder) / (stem + ext)
                path.write_text(render(cues), encoding="utf-8")
                written.append(str(path))
    return written


def run_command(args: argparse.Namespace) -> int:
    from ..captioner import Captioner

    cfg = FeedConfig(every=args.every, dedupe=args.dedupe, batch_size=args.batch_size,
                     max_frames=args.max_frames, fps=args.fps)
    cfg.check()
    options = generation_options(args)
    for folder in (args.vtt, args.srt):
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise FeedError(f"{folder}: cannot create the subtitle folder ({exc.strerror or exc})") from None
    done = {(r.source, r.frame): r for r in load_records(args.out)}  # also drops a torn last line
    sources = expand_sources(args.sources)
    captioner = Captioner(args.bundle, precision=args.precision, backend=args.backend, threads=args.threads)
    captioner.resolve_options(options)
    extra = {"model": captioner.bundle.manifest.source.model, "precision": captioner.precision}
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FeedError(f"{args.out}: cannot open for appending ({exc.strerror or exc})") from None
    progress = Progress(sys.stderr, quiet=args.quiet)
    interrupted = False
    stream = run_feed(captioner, sources, cfg, options, done, progress)
    try:
        for batch in stream:
            append_all(fd, encode_records(batch, extra))
            progress.frames_written(batch)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stream.close()
        os.close(fd)
        progress.close()
    if (args.vtt or args.srt) and not interrupted:
        write_subtitles(args.out, sources, cfg.every, args.vtt, args.srt)
    failed = [s for s in dict.fromkeys(p.source for p in sum(progress.problems.values(), []))]
    if not args.quiet:
        elapsed = time.monotonic() - progress.t0
        progress._print(
            f"feed: {progress.written} frames written to {args.out} ({progress.written - progress.repeats} captioned, "
            f"{progress.repeats} repeats), {progress.skipped} already there, {len(sources)} sources, "
            f"{elapsed:.1f} s, {progress.rate():.1f} frames/s")
    if failed:
        progress._print(f"feed: {len(failed)} of {len(sources)} sources had problems:")
        for source in failed:
            first = progress.problems[source][0]
            more = len(progress.problems[source]) - 1
            progress._print(f"  failed: {first}" + (f" (and {more} more)" if more else ""))
    if interrupted:
        progress._print(f"interrupted: finished frames are in {args.out}; rerun the same command to continue")
        return EXIT_INTERRUPTED
    return EXIT_INPUT_FAILED if failed else EXIT_OK
