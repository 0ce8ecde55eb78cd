"""TensorRT engine metadata: where engines live, what they were built from and for, when they are stale.

A serialized engine runs only on the TensorRT version that built it and is tuned for one GPU model;
it also bakes in the graph it came from and the profile's shape ranges. `engine.json`, written next
to the engines by `edgecap build-engine`, records all of that, and loading refuses engines that no
longer match with one line saying how to rebuild them (instead of TensorRT's deserialisation errors).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import Bundle
from ..errors import BundleError
from ..fileio import write_atomic
from .profiles import ProfileLimits, profile_from_json

META_FILE = "engine.json"
FORMAT = "edgecap-engines"
FORMAT_VERSION = 1
ROLES = ("encoder", "decoder")


@dataclass(frozen=True)
class RuntimeEnv:
    """What an engine is tied to on the running machine."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100)...


@dataclass(frozen=True)
class EngineFile:
    engine: str  # file name inside the engine directory
    source: str  # the graph, relative to the bundle
    source_sha256: str  # from the manifest's `files` when built
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max] shapes


@dataclass(frozen=True)
class EngineMeta:
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    limits: dict[str, int]  # ProfileLimits.to_dict()
    build_options: dict[str, Any]  # workspace, tf32... as given to the builder
    engines: dict[str, EngineFile]  # role -> engine
    edgecap_version: str = ""
    built_at: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def profile_limits(self) -> ProfileLimits:
        return ProfileLimits.from_dict(self.limits)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "EngineMeta":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{where}: not an edgecap engine metadata file")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where}: engine metadata version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        try:
            engines = {role: EngineFile(**e) for role, e in data.pop("engines").items()}
            meta = cls(engines=engines, **data)
            meta.profile_limits  # noqa: B018 - validates the limits
            for e in engines.values():
                profile_from_json(e.profile)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise BundleError(f"{where}: malformed engine metadata ({exc})") from None
        missing = [r for r in ROLES if r not in meta.engines]
        if missing:
            raise BundleError(f"{where}: no {', '.join(missing)} engine listed")
        return meta


def write_meta(directory: Path, meta: EngineMeta) -> Path:
    """Write engine.json atomically (a half-written file must not look like valid engines)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / META_FILE
    write_atomic(target, meta.to_json().encode("utf-8"))
    return target


def read_meta(directory: Path) -> EngineMeta:
    path = Path(directory) / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (no TensorRT engines here)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from None
    return EngineMeta.from_json(text, str(path))


# --- where engines live ------------------------------------------------------------------------


def user_cache_dir() -> Path:
    """$EDGECAP_CACHE_DIR, else $XDG_CACHE_HOME/edgecap, else ~/.cache/edgecap."""
    if os.environ.get("EDGECAP_CACHE_DIR"):
        return Path(os.environ["EDGECAP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgecap"


def bundle_key(bundle: Bundle, precision: str) -> str:
    """Names a bundle's precision in the user cache: the decoder graph's hash (content, not path)."""
    return bundle.manifest.files[bundle.graphs(precision).decoder.file][:16]


def engine_dirs(bundle: Bundle, precision: str, kind: str = "") -> list[Path]:
    """Candidate directories: inside the bundle first, then the user cache (read-only bundles).

    kind "" = edgecap's own engines (`engines/<precision>`); "ort-trt" = ONNX Runtime's TensorRT EP cache.
    """
    sub = Path(kind, precision) if kind else Path(precision)
    return [bundle.path / "engines" / sub, user_cache_dir() / "engines" / bundle_key(bundle, precision) / sub]


def find_engine_dir(bundle: Bundle, precision: str) -> Path | None:
    for d in engine_dirs(bundle, precision):
        if (d / META_FILE).is_file():
            return d
    return None


def writable_dir(candidates: list[Path]) -> Path:
    """The first candidate that exists or can be created and is writable."""
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise BundleError(f"{candidates[-1]}: cannot create a writable directory (set EDGECAP_CACHE_DIR)")


# --- staleness -----------------------------------------------------------------------------------


def staleness(
    meta: EngineMeta,
    bundle: Bundle,
    precision: str,
    env: RuntimeEnv,
    directory: Path | None = None,
    need_rows: int | None = None,
    need_new_tokens: int | None = None,
) -> str | None:
    """Why these engines cannot serve this bundle/precision/machine/request, or None if they can."""
    if meta.precision != precision:
        return f"built for {meta.precision}, {precision} requested"
    if meta.tensorrt_version != env.tensorrt_version:
        return f"built with TensorRT {meta.tensorrt_version}, this is TensorRT {env.tensorrt_version}"
    if meta.compute_capability != env.compute_capability or meta.gpu_name != env.gpu_name:
        return (
            f"built on {meta.gpu_name} (compute {meta.compute_capability}), "
            f"this GPU is {env.gpu_name} (compute {env.compute_capability})"
        )
    pair = bundle.graphs(precision)
    for role, graph in (("encoder", pair.encoder), ("decoder", pair.decoder)):
        e = meta.engines[role]
        if e.source != graph.file or e.source_sha256 != bundle.manifest.files.get(graph.file):
            return f"the {role} graph {graph.file} changed since the engine was built"
        if directory is not None and not (Path(directory) / e.engine).is_file():
            return f"{e.engine} is missing"
    limits = meta.profile_limits
    if need_rows is not None and need_rows > limits.max_rows:
        return (
            f"the profile allows {limits.max_rows} rows (batch {limits.max_batch} x beams {limits.max_beams}), "
            f"{need_rows} requested"
        )
    if need_new_tokens is not None and need_new_tokens > limits.max_new_tokens:
        return f"the profile allows {limits.max_new_tokens} new tokens, {need_new_tokens} requested"
    return None


def rebuild_hint(bundle: Bundle, precision: str, reason: str | None = None) -> str:
    extra = ""
    if reason and "profile allows" in reason:
        extra = " with larger --max-batch/--max-beams/--max-new-tokens"
    return f"run `edgecap build-engine {bundle.path} --precision {precision}`{extra}"


def check_engines(
    meta: EngineMeta,
    bundle: Bundle,
    precision: str,
    env: RuntimeEnv,
    directory: Path,
    need_rows: int | None = None,
    need_new_tokens: int | None = None,
) -> None:
    """Raise BundleError (one line, with the rebuild command) unless the engines are usable."""
    reason = staleness(meta, bundle, precision, env, directory, need_rows, need_new_tokens)
    if reason is not None:
        raise BundleError(f"{directory}: TensorRT engines are stale: {reason}; {rebuild_hint(bundle, precision, reason)}")
