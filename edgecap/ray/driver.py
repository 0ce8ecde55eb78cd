"""`edgecap feed --ray`: the feed on Ray Data, with one result file per source under an output folder.

The driver builds `read_feed` -> `caption_dataset`, streams the captioned rows back, gathers them
per source and, once a source is complete (its "end" row and every frame it announced are in),
writes that source's file atomically (temporary file, fsync, rename), then a marker
`_done/<hash>.json`. Rows that arrive twice (a retried task after an actor or worker died) land
on the same (source, frame) key, so a frame appears once; a source is written once, whole.

Resume is per source: a rerun skips sources with a marker and redoes the others from the start
(`edgecap feed` resumes per frame). A kill between a file's rename and its marker only makes the
rerun write the same file again. Settings live in `_settings.json`; the last run's summary,
failed sources included, in `_summary.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import ray
import ray.data

from edgecap.errors import EdgecapError
from edgecap.feeds.output import RECORD_KEYS, check_resume, encode_records, subtitle_text, write_atomic, write_subtitles
from edgecap.feeds.pipeline import FeedConfig
from edgecap.feeds.sources import FeedError, FeedSource, FrameCaption, relative_layout
from edgecap.outputlock import OutputLock
from edgecap.preprocess import PreprocessSpec
from edgecap.progress import StatusLine, format_eta

from .dataset import END, FRAME, PROBLEM, REPEAT, START, caption_dataset, read_feed

log = logging.getLogger(__name__)

SETTINGS, SUMMARY, MARKERS, LOCK = "_settings.json", "_summary.json", "_done", "_lock"


@dataclass(frozen=True)
class RayFeedConfig:
    out: str  # the output folder
    format: str = "jsonl"  # or "parquet"
    address: str | None = None  # ray.init's ("auto": the running local cluster); None: a new local instance
    actors: int | None = None  # Captioner actors; None: see default_actors()
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    decode_cpus: float = 1.0  # per read task
    overwrite: bool = False
    vtt: str | None = None
    srt: str | None = None

    def check(self) -> None:
        if self.format not in ("jsonl", "parquet"):
            raise FeedError(f"--format must be jsonl or parquet, got {self.format!r}")
        if self.actors is not None and self.actors < 1:
            raise FeedError(f"--actors must be >= 1, got {self.actors}")
        if not (self.actor_cpus > 0 or self.actor_gpus > 0) or self.actor_cpus < 0 or self.actor_gpus < 0:
            raise FeedError("--actor-cpus/--actor-gpus: an actor needs some CPUs or GPUs (and none negative)")


def default_actors(cfg: RayFeedConfig, resources: dict[str, float]) -> int:
    """One actor per GPU share when actors use GPUs, else half the CPUs: the other half decodes."""
    if cfg.actor_gpus > 0:
        return max(1, int(resources.get("GPU", 0) // cfg.actor_gpus))
    return max(1, int(resources.get("CPU", 1) // 2 // cfg.actor_cpus))


# --- the output folder -----------------------------------------------------------------------------


class OutputDir:
    """Per-source result files, their completion markers, settings and summary, in one folder."""

    def __init__(self, root: str | os.PathLike, fmt: str) -> None:
        self.root, self.fmt = Path(root), fmt
        try:
            (self.root / MARKERS).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FeedError(f"{self.root}: cannot create the output folder ({exc.strerror or exc})") from None
        if not os.access(self.root, os.W_OK):
            raise FeedError(f"{self.root}: output folder is not writable")

    def marker_path(self, source: str) -> Path:
        return self.root / MARKERS / (hashlib.sha1(source.encode()).hexdigest()[:24] + ".json")

    def markers(self) -> dict[str, dict[str, Any]]:
        """source -> marker of every source completed by an earlier run (whose file is still there)."""
        out = {}
        for path in sorted((self.root / MARKERS).glob("*.json")):
            try:
                marker = json.loads(path.read_text(encoding="utf-8"))
                source, file = marker["source"], marker["file"]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s: unreadable completion marker, its source will be redone", path)
                continue
            if (self.root / file).is_file():
                out[source] = marker
        return out

    def clean(self, everything: bool) -> None:
        """Remove temporary files of killed runs; with `everything`, also this tool's earlier results."""
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        if everything:
            for source, marker in self.markers().items():
                (self.root / marker["file"]).unlink(missing_ok=True)
                self.marker_path(source).unlink(missing_ok=True)
            for name in (SETTINGS, SUMMARY):
                (self.root / name).unlink(missing_ok=True)

    def file_names(self, sources: list[FeedSource], done: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Result file per source (relative to the root): its relative layout + .jsonl/.parquet.

        A name an earlier run gave another source (run with another set of sources) gets the
        source's hash added instead of overwriting it.
        """
        taken = {m["file"]: s for s, m in done.items()}
        names = {}
        for source, rel in relative_layout(sources).items():
            if source in done:
                names[source] = done[source]["file"]
                continue
            name = f"{rel}.{self.fmt}"
            if taken.get(name, source) != source:
                name = f"{rel}.{self.marker_path(source).stem[:8]}.{self.fmt}"
            names[source] = name
        return names

    def write_source(self, source: str, name: str, records: list[FrameCaption], extra: dict[str, Any],
                     settings: dict[str, Any], problems: list[str]) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encode_records(records, extra) if self.fmt == "jsonl" else _parquet_bytes(records, extra, settings)
        write_atomic(path, data)
        marker = {"source": source, "file": name, "frames": len(records),
                  "repeats": sum(r.repeat for r in records), "problems": problems}
        write_atomic(self.marker_path(source), json.dumps(marker).encode())

    def write_json(self, name: str, obj: Any) -> None:
        write_atomic(self.root / name, (json.dumps(obj, indent=1) + "\n").encode())


def _parquet_bytes(records: list[FrameCaption], extra: dict[str, Any], settings: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {k: [getattr(r, k) for r in records] for k in RECORD_KEYS}
    columns.update({k: [v] * len(records) for k, v in extra.items()})
    types = {"source": pa.string(), "frame": pa.int64(), "pts": pa.float64(), "caption": pa.string(),
             "score": pa.float64(), "repeat": pa.bool_(), "confidence": pa.float64()}
    if any(r.parsed is not None for r in records):  # JSON text, null where a record has none
        columns["parsed"] = [None if r.parsed is None else json.dumps(r.parsed) for r in records]
    table = pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in columns.items()})
    table = table.replace_schema_metadata({"edgecap.settings": json.dumps(settings)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


# --- gathering rows into sources ---------------------------------------------------------------------


@dataclass
class _Gathered:
    frames: dict[int, tuple] = field(default_factory=dict)  # frame -> (pts, caption, score, ref, confidence, parsed)
    expected: int | None = None  # frame + repeat rows announced by the "end" row
    estimate: int | None = None  # sample count from the duration ("start" row)
    problems: list[str] = field(default_factory=list)

    def complete(self) -> bool:
        return self.expected is not None and len(self.frames) >= self.expected

    def records(self, source: str) -> list[FrameCaption]:
        out = []
        for frame in sorted(self.frames):
            pts, caption, score, ref, conf, parsed = self.frames[frame]
            if ref >= 0:  # a repeat: the caption of the frame it repeats
                _, caption, score, _, conf, parsed = self.frames[ref]
            out.append(FrameCaption(source, frame, pts, caption, score, ref >= 0, conf, parsed))
        return out


class RayProgress:
    """Driver progress: sources and frames done of the total, frames/s, ETA (edgecap/progress.py)."""

    def __init__(self, stream: TextIO, sources: int, quiet: bool = False, interval: float = 10.0,
                 tty: bool | None = None) -> None:
        self.status = StatusLine(stream, quiet=quiet, interval=interval, tty=tty)
        self.t0 = time.monotonic()
        self.sources, self.sources_done = sources, 0
        self.frames = self.frames_before = 0  # captioned this run / complete before it
        self.estimates: dict[str, int | None] = {}
        self.t_first: float | None = None  # when the first batch of captions arrived
        self.first_frames = 0  # frames it brought (their time is before t_first)

    def total_frames(self) -> int | None:
        known = [e for e in self.estimates.values() if e is not None]
        if not known:
            return None
        pending = self.sources - self.sources_done - len(self.estimates)  # not started yet: guess the mean
        return self.frames_before + sum(known) + max(0, pending) * round(sum(known) / len(known))

    def rate(self, now: float | None = None) -> float:
        """Frames/s since the first captions came back (cluster start-up and model loads excluded)."""
        now = time.monotonic() if now is None else now
        if self.t_first is None or now - self.t_first < 1e-3:
            return 0.0
        return (self.frames - self.first_frames) / (now - self.t_first)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        rate = self.rate(now)
        done = self.frames_before + self.frames
        total = self.total_frames()
        text = f"ray: {self.sources_done}/{self.sources} sources, {done}"
        text += f"/~{max(total, done)} frames" if total else " frames"
        text += f", {rate:.1f} frames/s"
        if total and rate > 0:
            text += f", ETA {format_eta(max(0, total - done) / rate)}"
        return text

    def update(self, force: bool = False) -> None:
        self.status.update(self.line(), force=force)

    def print(self, line: str) -> None:
        self.status.print(line)


def _init_ray(address: str | None) -> None:
    # Ray Data's own progress bars and INFO lines would bury the one status line.
    quiet = logging.getLogger("edgecap").getEffectiveLevel() > logging.DEBUG
    level = logging.ERROR if quiet else logging.INFO
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    try:
        ray.init(address=address or "local", logging_level=level, log_to_driver=not quiet,
                 include_dashboard=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise FeedError(f"cannot connect to {where}: {' '.join(str(exc).split())}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def run_ray_feed(
    sources: list[FeedSource],
    bundle: str | None,
    spec: PreprocessSpec,
    settings: dict[str, Any],
    feed: FeedConfig,
    cfg: RayFeedConfig,
    options: Any = None,
    backend: str | None = None,
    progress: RayProgress | None = None,
) -> dict[str, Any]:
    """Caption `sources` into `cfg.out` on Ray; returns the run's summary (also in _summary.json).

    `spec` is the bundle's preprocessing (`Captioner.preprocess_spec`), applied in the read tasks.

    `settings` (from `edgecap.feeds.output.feed_settings`) are checked against the folder's and
    recorded; its "precision" is what every actor runs. Problems are printed as they come.
    """
    cfg.check()
    feed.check()
    out = OutputDir(cfg.out, cfg.format)
    with OutputLock(out.root, out.root / LOCK, what="edgecap feed --ray"):  # one driver per output folder
        return _run(out, sources, bundle, spec, settings, feed, cfg, options, backend, progress)


def _run(out: OutputDir, sources: list[FeedSource], bundle: str | None, spec: PreprocessSpec, settings: dict[str, Any],
         feed: FeedConfig, cfg: RayFeedConfig, options: Any, backend: str | None,
         progress: RayProgress | None) -> dict[str, Any]:
    out.clean(everything=cfg.overwrite)
    done = out.markers()
    check_resume(out.root / SETTINGS, bool(done), settings, str(out.root))
    out.write_json(SETTINGS, settings)
    names = out.file_names(sources, done)
    todo = [s for s in sources if s.name not in done]
    progress = progress or RayProgress(io.StringIO(), len(sources), quiet=True)
    progress.sources_done = len(sources) - len(todo)
    progress.frames_before = sum(int(done[s.name]["frames"]) for s in sources if s.name in done)
    failed: dict[str, list[str]] = {s: list(m["problems"]) for s, m in done.items()
                                    if m.get("problems") and s in names}
    extra = {"model": settings["model"], "precision": settings["precision"]}
    gathered: dict[str, _Gathered] = defaultdict(_Gathered)
    finished: set[str] = set()  # late duplicates of their rows (a retried task) are ignored
    written: list[str] = []
    summary = {"out": str(out.root), "sources": len(sources), "skipped": len(sources) - len(todo)}
    if todo:
        _init_ray(cfg.address)
        actors = cfg.actors or default_actors(cfg, ray.cluster_resources())
        log.debug("ray: %d actors for %d sources", actors, len(todo))
        frames = read_feed(todo, spec, feed, decode_cpus=cfg.decode_cpus)
        captioned = caption_dataset(frames, bundle, precision=settings["precision"], backend=backend,
                                    options=options, batch_size=feed.batch_size, actors=actors,
                                    actor_cpus=cfg.actor_cpus, actor_gpus=cfg.actor_gpus)
        for batch in _batches(captioned):
            for source in _gather(batch, gathered, finished, progress, failed):
                finished.add(source)
                g = gathered.pop(source)
                records = g.records(source)
                if records or not g.problems:  # a source that failed outright is retried next time
                    out.write_source(source, names[source], records, extra, settings, g.problems)
                    written.append(source)
                progress.sources_done += 1
                progress.update()
    for source in gathered:  # only if Ray lost rows without failing the run: never silently
        failed.setdefault(source, []).append(f"{source}: incomplete ({len(gathered[source].frames)} frames arrived); "
                                             "rerun to redo it")
    if cfg.vtt or cfg.srt:
        write_subtitles(_subtitle_samples(out, sources, names), sources, feed.every, cfg.vtt, cfg.srt)
    summary.update({
        "written": len(written), "frames": progress.frames, "seconds": round(time.monotonic() - progress.t0, 3),
        "frames_per_second": round(progress.rate(), 3),
        "failed": [{"source": s, "problems": p} for s, p in failed.items()],
    })
    out.write_json(SUMMARY, summary)
    return summary


def _batches(ds: ray.data.Dataset):
    """The dataset's batches; a failed run becomes one line, exit 2 when it is an edgecap error
    raised on a worker (a bundle missing on a node, say), else an internal error."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except ray.exceptions.RayError as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, EdgecapError):
                raise FeedError(f"on a Ray worker: {cause}") from None
            cause = getattr(cause, "cause", None) or cause.__cause__
        text = [line.strip() for line in str(exc).splitlines()]
        named = [line for line in text if re.match(r"^[\w.]*(Error|Exception)\b[^:]*: ", line)]
        ours = [line for line in named if line.split(":")[0].rsplit(".", 1)[-1] in _OUR_ERRORS]
        if ours:
            raise FeedError(f"on a Ray worker: {ours[-1].split(': ', 1)[1]}") from None
        raise RuntimeError(f"the Ray run failed: {(named or text or [type(exc).__name__])[-1]}") from exc


_OUR_ERRORS = {"EdgecapError", "BundleError", "ImageError", "OptionsError", "FeedError", "UnsupportedModelError"}


def _gather(batch: dict[str, np.ndarray], gathered: dict[str, _Gathered], finished: set[str],
            progress: RayProgress, failed: dict[str, list[str]]) -> list[str]:
    """Add a batch of captioned rows; returns the sources it completed."""
    touched = set()
    first = progress.t_first is None
    for source, kind, frame, pts, ref, expected, problem, caption, score, conf, parsed in zip(
            batch["source"], batch["kind"], batch["frame"], batch["pts"], batch["ref"], batch["expected"],
            batch["problem"], batch["caption"], batch["score"], batch["confidence"], batch["parsed"]):
        source = str(source)
        if source in finished:
            continue
        g = gathered[source]
        if kind in (FRAME, REPEAT):
            if int(frame) not in g.frames:
                progress.frames += 1
            g.frames[int(frame)] = (float(pts), str(caption), float(score), int(ref) if kind == REPEAT else -1,
                                    None if math.isnan(float(conf)) else float(conf),
                                    json.loads(parsed) if parsed else None)
        elif kind == START:
            progress.estimates[source] = None if expected < 0 else int(expected)
        elif kind == PROBLEM and str(problem) not in g.problems:
            g.problems.append(str(problem))
            failed.setdefault(source, []).append(str(problem))
            progress.print(str(problem))
        elif kind == END:
            g.expected = int(expected)
        touched.add(source)
    if first and progress.frames:
        progress.t_first, progress.first_frames = time.monotonic(), progress.frames
    progress.update()
    return [s for s in touched if gathered[s].complete()]


def _subtitle_samples(out: OutputDir, sources: list[FeedSource], names: dict[str, str]) -> dict[str, list[tuple[float, str]]]:
    from edgecap.feeds.output import load_records

    samples: dict[str, list[tuple[float, str]]] = {}
    for s in sources:
        path = out.root / names[s.name]
        if s.kind != "video" or not path.is_file():
            continue
        if out.fmt == "jsonl":
            samples[s.name] = [(r.pts, subtitle_text(r)) for r in load_records(path, repair=False)]
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            parsed = table["parsed"].to_pylist() if "parsed" in table.column_names else [None] * table.num_rows
            samples[s.name] = [(pts, subtitle_text(FrameCaption(s.name, 0, pts, caption, 0.0, False, None,
                                                                 json.loads(p) if p else None)))
                               for pts, caption, p in zip(table["pts"].to_pylist(), table["caption"].to_pylist(), parsed)]
    return samples
