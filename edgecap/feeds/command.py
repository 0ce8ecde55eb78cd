"""`edgecap feed`: caption camera feeds into a resumable JSON-lines file (and subtitles).

Exit codes: 0 every source done; 1 some source failed (the others were still captioned); 2 usage
or bundle error; 130 interrupted (everything finished before Ctrl-C is on disk: rerun to go on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from typing import TextIO

from ..cliargs import EXIT_CODES_HELP, EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_OK, add_generation_args, add_model_args, generation_options
from ..fileio import is_symlink_refusal, open_append
from ..outputlock import OutputLock
from ..progress import StatusLine, format_eta
from ..signals import EXIT_BROKEN_PIPE, EXIT_TERMINATED, Terminated, silence_stdout, whole_line
from .output import (
    append_all, check_resume, encode_records, feed_settings, load_records, lock_file, settings_file, subtitle_text,
    write_atomic, write_subtitles,
)
from .pipeline import FeedConfig, FeedListener, run_feed
from .sources import DEFAULT_BATCH_SIZE, DEFAULT_DEDUPE, DEFAULT_EVERY, FeedError, FeedProblem, FrameCaption, expand_sources



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
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video files, folders of frames, PDFs (a frame per page; needs the pdf extra), or glob patterns")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="JSON-lines output, appended to and resumed from (settings recorded in FILE.settings.json); "
                   "'-' writes to stdout (nothing to resume from); with --ray a folder, one file per source")
    p.add_argument("--overwrite", action="store_true",
                   help="start over when --out already holds results (needed when the settings changed)")
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
    r = p.add_argument_group("Ray cluster (needs edgecap[ray]; docs/ray.md)")
    r.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray Data: ADDRESS as ray.init takes it ('auto', 'ray://host:10001', host:port); "
                   "bare --ray starts a local Ray instance. --out is then a folder")
    r.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                   help="with --ray: result file format per source (default: jsonl)")
    r.add_argument("--actors", type=int, metavar="N",
                   help="with --ray: Captioner actors (default: one per GPU with a GPU backend, else half the cluster's CPUs / --actor-cpus)")
    r.add_argument("--actor-cpus", type=float, metavar="N",
                   help="with --ray: CPUs per Captioner actor, also its ONNX Runtime threads (default: --threads, else 1)")
    r.add_argument("--actor-gpus", type=float, metavar="N",
                   help="with --ray: GPUs per actor (default: 1 with a GPU --backend, else 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return p


RAY_ONLY = ("format", "actors", "actor_cpus", "actor_gpus")


def check_args(args: argparse.Namespace) -> None:
    """Usage errors of option combinations (FeedError: exit 2)."""
    if args.ray is None:
        used = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k) not in (None, "jsonl")]
        if used:
            raise FeedError(f"{', '.join(used)} only apply with --ray (edgecap feed appends JSON lines to one file)")
    if args.ray and os.path.exists(args.ray):  # `--ray clip.mp4 ...`: the optional value took a source
        raise FeedError(f"--ray {args.ray}: that is a file, not a Ray address; put --ray after the sources "
                        "or write --ray=ADDRESS")
    if args.out == "-":
        if args.ray is not None:
            raise FeedError("--ray writes one result file per source: --out must be a folder, not '-'")
        if args.overwrite:
            raise FeedError("--out - writes to stdout, which has nothing to resume or overwrite: "
                            "give an output file to resume from")


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


def run_command(args: argparse.Namespace) -> int:
    check_args(args)
    if args.ray is not None:
        try:
            from ..ray.command import run_ray_command  # imports Ray only when asked for
        except ImportError as exc:
            if "edgecap.ray needs" not in str(exc):
                raise
            raise FeedError(f"--ray: {exc}") from None
        return run_ray_command(args)
    from ..captioner import Captioner

    cfg = FeedConfig(every=args.every, dedupe=args.dedupe, batch_size=args.batch_size,
                     max_frames=args.max_frames, fps=args.fps)
    cfg.check()
    options = generation_options(args)
    make_folders(args.vtt, args.srt)
    to_stdout = args.out == "-"
    sources = expand_sources(args.sources)
    captioner = Captioner(args.bundle, precision=args.precision, backend=args.backend, threads=args.threads)
    with contextlib.ExitStack() as held:
        if not to_stdout:  # one writer per output, from before it is read until the last line is written
            held.enter_context(OutputLock(args.out, lock_file(args.out)))
        return _run(args, captioner, cfg, options, sources, to_stdout)


def _run(args: argparse.Namespace, captioner, cfg: FeedConfig, options, sources, to_stdout: bool) -> int:
    settings = feed_settings(captioner, cfg, options)
    done: dict[tuple[str, int], FrameCaption] = {}
    if to_stdout:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    else:
        try:
            fd = open_append(args.out)  # before anything is read: a symbolic link here is refused
        except OSError as exc:
            why = "is a symbolic link; give the real path" if is_symlink_refusal(exc) else exc.strerror or exc
            raise FeedError(f"{args.out}: cannot write the output ({why})") from None
        try:
            if args.overwrite:
                os.ftruncate(fd, 0)
            done = {(r.source, r.frame): r for r in load_records(args.out)}  # also drops a torn last line
            check_resume(settings_file(args.out), bool(done), settings, args.out)
            write_atomic(settings_file(args.out), json.dumps(settings, indent=1).encode())
        except OSError as exc:
            os.close(fd)
            raise FeedError(f"{args.out}: cannot write the output ({exc.strerror or exc})") from None
        except BaseException:
            os.close(fd)
            raise
    extra = {"model": settings["model"], "precision": settings["precision"]}
    subtitles: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in done.values():
        subtitles[r.source].append((r.pts, subtitle_text(r)))
    progress = Progress(sys.stderr, quiet=args.quiet)
    interrupted: KeyboardInterrupt | None = None
    closed = False
    stream = run_feed(captioner, sources, cfg, options, done, progress)
    try:
        for batch in stream:
            with whole_line():  # a signal waits until the batch's lines are all written
                append_all(fd, encode_records(batch, extra), sync=not to_stdout)
            progress.frames_written(batch)
            for r in batch:
                subtitles[r.source].append((r.pts, subtitle_text(r)))
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (Terminated)
        interrupted = exc
    except BrokenPipeError:  # `edgecap feed ... --out - | head`: the reader is gone
        closed = True
    finally:
        stream.close()
        if not to_stdout:
            os.close(fd)
        progress.close()
    if (args.vtt or args.srt) and not (interrupted or closed):
        write_subtitles(subtitles, sources, cfg.every, args.vtt, args.srt)
    if closed:  # quietly, as a tool killed by SIGPIPE
        silence_stdout()
        return EXIT_BROKEN_PIPE
    where = "stdout" if to_stdout else args.out
    if not args.quiet:
        elapsed = time.monotonic() - progress.t0
        progress._print(
            f"feed: {progress.written} frames written to {where} ({progress.written - progress.repeats} captioned, "
            f"{progress.repeats} repeats), {progress.skipped} already there, {len(sources)} sources, "
            f"{elapsed:.1f} s, {progress.rate():.1f} frames/s")
    failed = [s for s in dict.fromkeys(p.source for p in sum(progress.problems.values(), []))]
    if failed:
        progress._print(f"feed: {len(failed)} of {len(sources)} sources had problems:")
        for source in failed:
            first = progress.problems[source][0]
            more = len(progress.problems[source]) - 1
            progress._print(f"  failed: {first}" + (f" (and {more} more)" if more else ""))
    if interrupted is not None:
        hint = "" if to_stdout else f"finished frames are in {args.out}; rerun the same command to continue"
        terminated = isinstance(interrupted, Terminated)
        progress._print(("terminated (SIGTERM)" if terminated else "interrupted") + (f": {hint}" if hint else ""))
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    return EXIT_INPUT_FAILED if failed else EXIT_OK


def make_folders(*folders: str | None) -> None:
    for folder in folders:
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise FeedError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None
