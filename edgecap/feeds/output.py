"""The feed output: JSON lines appended one batch per write, fsync'd, resumable after a kill.

Next to it, the settings the records were made with (`OUT.settings.json`; the Ray path keeps them
in `DIR/_settings.json`): a resume under other settings would silently mix captions, so it is
refused unless the caller asks to start over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..fileio import append_all, write_atomic  # noqa: F401 (append_all re-exported by edgecap.feeds)
from ..florence2 import answer_summary
from ..options import GenerationOptions
from .sources import FeedError, FeedSource, FrameCaption, _exc_text, relative_layout

if TYPE_CHECKING:
    from ..captioner import Captioner
    from .pipeline import FeedConfig

log = logging.getLogger(__name__)

RECORD_KEYS = ("source", "frame", "pts", "caption", "score", "repeat", "confidence")


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
                                        str(obj["caption"]), float(obj["score"]), bool(obj["repeat"]),
                                        _optional_float(obj.get("confidence")), obj.get("parsed")))
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


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def encode_records(records: Iterable[FrameCaption], extra: dict[str, Any]) -> bytes:
    """JSON lines; "parsed" (the answer as a structure) only where a record has one."""
    # UTF-8 as JSON Lines wants it (Japanese OCR stays readable); an undecodable file name's lone
    # surrogates become \udcXX escapes, which read back as the same name on resume
    text = "".join(json.dumps({**{k: getattr(r, k) for k in RECORD_KEYS}, **_parsed(r), **extra}, ensure_ascii=False)
                   + "\n" for r in records)
    return text.encode("utf-8", "backslashreplace")


def _parsed(record: FrameCaption) -> dict[str, Any]:
    return {} if record.parsed is None else {"parsed": record.parsed}


def subtitle_text(record: FrameCaption) -> str:
    """What a subtitle shows of a record: the text part of a parsed Florence-2 answer (the plain answer,
    or the labels of what it located), else the caption."""
    summary = answer_summary(record.parsed)
    return record.caption if summary is None else summary


def settings_file(out: str | os.PathLike) -> Path:
    """Where `edgecap feed --out OUT` records its settings."""
    return Path(os.fspath(out) + ".settings.json")


def lock_file(out: str | os.PathLike) -> Path:
    """The lock file `edgecap feed --out OUT` holds for the run (edgecap/outputlock.py)."""
    return Path(os.fspath(out) + ".lock")


def subtitle_names(sources: Sequence[FeedSource]) -> dict[str, str]:
    """Subtitle file name (without .vtt/.srt) per video source, mirroring the sources' layout.

    The path relative to the deepest folder holding all the videos (`cam1/clip`, `cam2/clip`), the
    extension dropped as players expect (`clip.vtt` beside `clip.mp4`) unless that would be
    ambiguous (`photos.mp4` and `photos.webm` -> `photos.mp4.vtt`, `photos.webm.vtt`).
    """
    layout = relative_layout([s for s in sources if s.kind == "video" and not s.problem])
    stems = {name: os.path.splitext(rel)[0] for name, rel in layout.items()}
    taken = Counter(stems.values()) + Counter(layout.values())
    return {name: stem if taken[stem] == 1 else layout[name] for name, stem in stems.items()}


def write_subtitles(captions: dict[str, list[tuple[float, str]]], sources: Sequence[FeedSource], every: float,
                    vtt: str | None, srt: str | None) -> list[str]:
    """One WebVTT and/or SubRip file per video source from its (pts, caption) samples; the paths written."""
    from ..subtitles import merge_cues, to_srt, to_vtt

    written = []
    for source, name in subtitle_names(sources).items():
        if not captions.get(source):
            continue
        cues = merge_cues(captions[source], every)
        for folder, ext, render in ((vtt, ".vtt", to_vtt), (srt, ".srt", to_srt)):
            if folder:
                path = Path(folder) / (name + ext)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(path, render(cues).encode("utf-8"))
                except OSError as exc:
                    raise FeedError(f"{path}: cannot write the subtitles ({_exc_text(exc)})") from None
                written.append(str(path))
    return written


# --- settings ------------------------------------------------------------------------------------

# What changes the records: compared on resume. Batch size, threads and backend only change speed
# (captions are batch-invariant); they are recorded for the reader but not compared.
COMPARED_SETTINGS = ("model", "weights", "precision", "every", "dedupe", "fps", "generation")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def feed_settings(captioner: "Captioner", cfg: "FeedConfig", options: GenerationOptions | None,
                  **info: Any) -> dict[str, Any]:
    """The settings a feed output is made with, as recorded next to it (`info`: extra, not compared)."""
    man = captioner.bundle.manifest
    prefix = captioner.precision + "/"
    digest = hashlib.sha256()
    for rel, sha in sorted(man.files.items()):  # this precision's graphs and the tokenizer
        if rel.startswith(prefix) or rel == man.tokenizer.file:
            digest.update(f"{rel}={sha}\n".encode())
    # generate()'s options as they take effect (bundle defaults filled in); what derives from the
    # bundle itself (token ids, position limit) is covered by the weights' digest
    options = options or GenerationOptions()
    resolved = captioner.resolve_options(options)
    generation = {f.name: getattr(resolved, f.name, getattr(options, f.name))
                  for f in dataclasses.fields(GenerationOptions)}
    return _jsonable({
        "model": man.source.model, "weights": digest.hexdigest()[:16], "precision": captioner.precision,
        "every": cfg.every, "dedupe": cfg.dedupe, "fps": cfg.fps, "generation": generation,
        "max_frames": cfg.max_frames, "batch_size": cfg.batch_size, "backend": captioner.backend, **info,
    })


def settings_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: recorded X, now Y` for each compared setting that differs."""
    out = []
    for key in COMPARED_SETTINGS:
        old, new = recorded.get(key), current.get(key)
        if key == "generation" and isinstance(old, dict) and isinstance(new, dict):
            out += [f"{k}: recorded {old.get(k)!r}, now {new.get(k)!r}"
                    for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            out.append(f"{key}: recorded {old!r}, now {new!r}")
    return out


def read_settings(path: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded settings, or None when there are none."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FeedError(f"{path}: cannot read the recorded settings ({_exc_text(exc)})") from None
    if not isinstance(data, dict):
        raise FeedError(f"{path}: the recorded settings are not a JSON object")
    return data


def check_resume(settings_file: str | os.PathLike, has_output: bool, settings: dict[str, Any], where: str) -> None:
    """Refuse to add to an output made with other settings (FeedError naming each difference)."""
    if not has_output:
        return
    recorded = read_settings(settings_file)
    if recorded is None:
        raise FeedError(f"{where}: holds results but no recorded settings ({settings_file} is missing), so "
                        "resuming could mix settings; rerun with --overwrite to start over, or use another --out")
    diffs = settings_differences(recorded, settings)
    if diffs:
        raise FeedError(f"{where}: was made with other settings ({'; '.join(diffs)}); rerun with the recorded "
                        "ones to resume, with --overwrite to start over, or use another --out")
