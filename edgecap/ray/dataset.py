"""The Ray Data stages: sources -> sampled frames (read tasks) -> captions (a pool of Captioner actors).

`read_feed` makes one read task per source: it samples, dedupes and preprocesses the source in time
order exactly as `edgecap feed` does (`edgecap.feeds.pipeline.sample_source`), next to the data, and
emits one row per sampled frame plus a few bookkeeping rows (see ROW KINDS). `caption_dataset`
captions any dataset with an image column over a pool of actors, each loading the bundle once;
batches mix sources, which changes no caption (captions are batch-invariant).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from functools import partial
from typing import Any, Iterator, Sequence

import numpy as np
import ray
import ray.data

from edgecap.decoding import confidence
from edgecap.errors import EdgecapError
from edgecap.feeds.pipeline import FeedConfig, RepeatedFrame, SampledFrame, sample_source
from edgecap.feeds.sources import FeedProblem, FeedSource, expand_sources
from edgecap.options import GenerationOptions
from edgecap.preprocess import PreprocessSpec, load_image, preprocess_one

log = logging.getLogger(__name__)

# ROW KINDS of `read_feed`. "frame": a sampled frame, its preprocessed pixels in `pixel_values`
# (float32 [3, H, W], as bytes). "repeat": a frame dedupe found unchanged; it takes the caption of
# frame `ref` of its source. "start": `expected` = the source's sample count from its duration (or
# -1). "problem": `problem` says what went wrong (the source goes on unless it cannot be read).
# Frames also carry their size before preprocessing (`width`, `height`: where parsed answers' boxes lie).
# "end": the source is fully read; `expected` = how many frame and repeat rows it produced, so a
# consumer knows when it has all of them whatever order blocks arrive in.
FRAME, REPEAT, START, PROBLEM, END = "frame", "repeat", "start", "problem", "end"
COLUMNS = ("source", "kind", "frame", "pts", "ref", "expected", "problem", "pixel_values", "width", "height")
ROWS_PER_YIELD = 16
DECODE_MEMORY = 256 * 2**20  # bytes a read task reserves  # rows per output batch of a read task: frames stream on while a long video decodes


def _rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {c: np.array([r[c] if c in r else _DEFAULTS[c] for r in rows], dtype=_DTYPES[c]) for c in COLUMNS}


_DEFAULTS: dict[str, Any] = {"frame": -1, "pts": 0.0, "ref": -1, "expected": -1, "problem": "", "pixel_values": b"",
                             "width": -1, "height": -1}
_DTYPES: dict[str, Any] = {"source": object, "kind": object, "frame": np.int64, "pts": np.float64, "ref": np.int64,
                           "expected": np.int64, "problem": object, "pixel_values": object, "width": np.int64,
                           "height": np.int64}


def _decode_sources(batch: dict[str, np.ndarray], config: FeedConfig, spec: PreprocessSpec) -> Iterator[dict[str, np.ndarray]]:
    """A read task: the sampled frames of the sources in `batch` (one, as `read_feed` splits them)."""
    for name, kind, paths, problem in zip(batch["source"], batch["kind"], batch["paths"], batch["problem"]):
        src = FeedSource(str(name), str(kind), tuple(str(p) for p in paths), str(problem) or None)
        rows: list[dict[str, Any]] = []
        count = 0
        for item in sample_source(src, config, spec):
            if isinstance(item, SampledFrame):
                count += 1
                width, height = item.size or (-1, -1)
                rows.append({"source": src.name, "kind": FRAME, "frame": item.frame, "pts": item.pts,
                             "pixel_values": np.ascontiguousarray(item.pixels, np.float32).tobytes(),
                             "width": width, "height": height})
            elif isinstance(item, RepeatedFrame):
                count += 1
                rows.append({"source": src.name, "kind": REPEAT, "frame": item.frame, "pts": item.pts, "ref": item.ref})
            elif isinstance(item, FeedProblem):
                rows.append({"source": src.name, "kind": PROBLEM, "problem": str(item)})
            elif item.kind == "start":
                rows.append({"source": src.name, "kind": START, "expected": -1 if item.value is None else item.value})
            if len(rows) >= ROWS_PER_YIELD:
                yield _rows(rows)
                rows = []
        rows.append({"source": src.name, "kind": END, "expected": count})
        yield _rows(rows)


def read_feed(
    sources: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[FeedSource],
    spec: PreprocessSpec,
    config: FeedConfig = FeedConfig(),
    decode_cpus: float = 1.0,
) -> ray.data.Dataset:
    """A Dataset of the sampled frames of `sources` (video files, frame folders, globs), one read
    task per source, preprocessed with `spec` (the bundle's: `Captioner(...).preprocess_spec`).

    Columns: source, kind, frame, pts, ref, expected, problem, pixel_values (see ROW KINDS above).
    """
    config.check()
    if isinstance(sources, (str, os.PathLike)) or not all(isinstance(s, FeedSource) for s in sources):
        sources = expand_sources(sources)  # type: ignore[arg-type]
    items = [{"source": s.name, "kind": s.kind, "paths": list(s.paths), "problem": s.problem or ""} for s in sources]
    if not items:
        raise EdgecapError("no sources to read")
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Blocks of about ROWS_PER_YIELD frames (this dataset's context only): with Ray Data's default
    # (128 MiB, a thousand frames) the actors would wait for a whole video to decode before
    # captioning any of it, and the driver would see progress a video at a time.
    h, w = spec.output_hw
    ds.context.target_max_block_size = max(2**20, ROWS_PER_YIELD * 3 * h * w * 4)
    # batch_size=1: a read task per source, so sources decode in parallel across the cluster.
    # The memory request (a decoder and a few frames) also keeps Ray Data from fusing the decode
    # into the captioning actors (it fuses only operators with equal resource requests), where
    # each actor would decode its sources one at a time. A read task whose worker dies is redone
    # by Ray; its rows are keyed by frame, so the consumer sees no duplicates.
    return ds.map_batches(partial(_decode_sources, config=config, spec=spec), batch_size=1,
                          batch_format="numpy", num_cpus=decode_cpus, memory=DECODE_MEMORY)


class _CaptionActor:
    """One per actor: loads the bundle once; captions the rows of a batch that carry an image."""

    def __init__(self, bundle: str | None, precision: str | None, backend: str | None, threads: int,
                 options: GenerationOptions | None, column: str | None) -> None:
        from edgecap.captioner import Captioner

        self.captioner = Captioner(bundle, precision=precision, backend=backend, threads=threads)
        self.options, self.column = options, column
        self.shape = (3, *self.captioner.preprocess_spec.output_hw)

    def _pixels(self, value: Any, preprocessed: bool) -> tuple[np.ndarray, tuple[int, int] | None] | None:
        """(preprocessed pixels, the image's (width, height) when known), or None for no image."""
        if value is None or (isinstance(value, (bytes, bytearray)) and not value):
            return None
        if preprocessed:
            if isinstance(value, (bytes, bytearray)):
                return np.frombuffer(value, np.float32).reshape(self.shape), None
            return np.asarray(value, np.float32).reshape(self.shape), None
        if isinstance(value, (bytes, bytearray)):  # an encoded image file (read_binary_files)
            from PIL import Image

            value = Image.open(io.BytesIO(value))
        rgb = load_image(value)
        return preprocess_one(rgb, self.captioner.preprocess_spec), (rgb.width, rgb.height)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = self.column or ("pixel_values" if "pixel_values" in batch else "image")
        if column not in batch:
            raise EdgecapError(f"caption_dataset: no column {column!r} (columns: {', '.join(batch)})")
        values = batch.pop(column)
        n = len(values)
        widths, heights = batch.get("width"), batch.get("height")  # read_feed's frames carry their size
        captions = np.full(n, "", dtype=object)
        parsed = np.full(n, "", dtype=object)  # JSON text of Caption.parsed, "" when none
        scores = np.full(n, math.nan)
        confidences = np.full(n, math.nan)
        errors = np.full(n, "", dtype=object)
        todo: list[int] = []
        pixels: list[np.ndarray] = []
        sizes: list[tuple[int, int] | None] = []
        for i, value in enumerate(values):
            try:
                found = self._pixels(value, column == "pixel_values")
            except (EdgecapError, OSError, ValueError) as exc:  # a bad image is this row's problem
                errors[i] = str(exc) or type(exc).__name__
                continue
            if found is not None:
                size = found[1]
                if size is None and widths is not None and heights is not None and widths[i] > 0:
                    size = (int(widths[i]), int(heights[i]))
                todo.append(i)
                pixels.append(found[0])
                sizes.append(size)
        if pixels:
            cap = self.captioner
            resolved = cap.resolve_options(self.options)
            for i, size, hyps in zip(todo, sizes, cap.decode(cap.encode(np.stack(pixels), self.options), self.options)):
                captions[i] = cap.caption_text(hyps[0], resolved)[0]
                scores[i] = float(hyps[0].score)
                confidences[i] = confidence(hyps[0].token_scores)
                answer = self._parse(hyps[0].token_ids, size)
                parsed[i] = "" if answer is None else json.dumps(answer)
        return {**batch, "caption": captions, "score": scores, "confidence": confidences, "parsed": parsed,
                "error": errors}

    def _parse(self, token_ids: Any, size: tuple[int, int] | None) -> Any:
        """Caption.parsed; a Florence-2 answer with locations needs the image's size (a preprocessed
        pixel_values column without width/height columns has none: no parsed answer then)."""
        try:
            return self.captioner.parse_answer(token_ids, size, self.options)
        except ValueError:
            return None


def caption_dataset(
    ds: ray.data.Dataset,
    bundle: str | os.PathLike | None = None,
    *,
    precision: str | None = None,
    backend: str | None = None,
    options: GenerationOptions | None = None,
    batch_size: int = 8,
    actors: int | None = None,
    actor_cpus: float = 1.0,
    actor_gpus: float = 0.0,
    column: str | None = None,
) -> ray.data.Dataset:
    """Caption the images of `ds` on a pool of Captioner actors; lazily, like any Ray Data transform.

    The image column (`column`; default "pixel_values" if present, else "image") holds HxWx3 uint8
    arrays (`ray.data.read_images`), encoded image files as bytes (`read_binary_files`), or, as
    `read_feed` emits them, preprocessed float32 pixels. Rows without an image (empty bytes, None)
    pass through. The image column is dropped; added: `caption`, `score` (NaN where nothing was
    captioned), `parsed` (the answer as a structure, JSON text: Florence-2's boxes in the image's
    pixels, Donut's JSON; "" for none) and `error` (why an image could not be read, else "").

    Each actor reserves `actor_cpus` CPUs and runs ONNX Runtime with as many threads, and
    `actor_gpus` GPUs (give a GPU `backend` with it). `actors`: pool size (default 1).
    """
    if batch_size < 1:
        raise EdgecapError(f"batch_size must be >= 1, got {batch_size}")
    if actor_cpus <= 0 and actor_gpus <= 0:
        raise EdgecapError("an actor needs actor_cpus > 0 (or GPUs)")
    threads = max(1, int(round(actor_cpus)))
    return ds.map_batches(
        _CaptionActor,
        fn_constructor_kwargs={"bundle": None if bundle is None else os.fspath(bundle), "precision": precision,
                               "backend": backend, "threads": threads, "options": options, "column": column},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, actors or 1)),
        num_cpus=actor_cpus,
        num_gpus=actor_gpus or None,
    )
