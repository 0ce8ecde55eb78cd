"""Loading a bundle: every check happens here, before the first caption."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest as mf
from .bundlecheck import check_json_bounds, check_manifest
from .errors import BundleError
from .onnxfile import OnnxFormatError, external_data_locations

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory and its manifest."""

    path: Path
    manifest: mf.Manifest
    # graph file -> the bundle files its external-data entries name (each checked to lie inside the
    # bundle and to have a checksum): as much the graph as the graph file itself
    external: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest.graphs)

    def file(self, rel: str) -> Path:
        return mf.safe_relative_path(self.path, rel, str(self.path / mf.MANIFEST_FILE))

    def verify_files(self, rels: list[str]) -> None:
        """sha256 of these files, and of the external-data files their graphs read (as much the
        graph as the graph file), against the manifest."""
        files = self.manifest.files
        for rel in dict.fromkeys(rels + [x for r in rels for x in self.external.get(r, ())]):
            if rel not in files:
                raise BundleError(f"{self.path / mf.MANIFEST_FILE}: {rel} has no checksum in 'files'")
            full = self.file(rel)
            if sha256_file(full) != files[rel]:
                raise BundleError(f"{full}: checksum mismatch (the file was changed after export); re-export the bundle")

    def graphs(self, precision: str) -> mf.GraphPair:
        if precision not in self.manifest.graphs:
            raise BundleError(
                f"{self.path}: no {precision!r} graphs in this bundle; it has: {', '.join(self.precisions)}"
            )
        return self.manifest.graphs[precision]


MAX_MANIFEST_READ = 1 << 30  # not even read beyond this (check_json_bounds names the real limit)


def _external_files(root: Path, graph_rel: str, manifest: mf.Manifest) -> tuple[str, ...]:
    """The bundle files the graph's external-data entries name, each checked: relative, inside the
    bundle after resolving symbolic links, and listed with a checksum in the manifest."""
    graph = root / graph_rel
    try:
        locations = external_data_locations(graph)
    except OnnxFormatError as exc:
        raise BundleError(f"{graph}: not a readable ONNX graph ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{graph}: cannot read ({exc.strerror or exc})") from None
    folder = graph_rel.rpartition("/")[0]
    out = []
    for location in dict.fromkeys(locations):
        rel = location.replace("\\", "/")
        if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
            raise BundleError(f"{graph}: external data location {location!r} is an absolute path; "
                              "a bundle's graphs may only read files inside the bundle")
        joined = os.path.normpath(f"{folder}/{rel}" if folder else rel).replace(os.sep, "/")
        if joined == ".." or joined.startswith("../") or "/../" in f"/{joined}/":
            raise BundleError(f"{graph}: external data location {location!r} leaves the bundle directory")
        mf.safe_relative_path(root, joined, str(graph))  # symbolic links out of the bundle
        if joined not in manifest.files:
            raise BundleError(f"{graph}: external data file {joined} ({location!r}) is not listed with a checksum in "
                              f"{mf.MANIFEST_FILE}'s files; re-export the bundle")
        out.append(joined)
    return tuple(out)


def load_bundle(path: str | os.PathLike, precision: str | None = None, verify_checksums: bool = True) -> Bundle:
    """Read and validate a bundle.

    Checks: manifest schema and version; every path relative and inside the bundle; every listed file
    present; sha256 of the tokenizer and of the graphs of `precision` (all precisions when None).
    Graph signatures are compared with the manifest when sessions are created (`backends.py`).
    """
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: bundle directory not found")
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory (a bundle is a directory with {mf.MANIFEST_FILE})")
    man_path = root / mf.MANIFEST_FILE
    if not man_path.is_file():
        raise BundleError(f"{man_path}: missing; is {root} an edgecap bundle? (create one with `edgecap export`)")
    try:
        if man_path.stat().st_size > MAX_MANIFEST_READ:
            raise BundleError(f"{man_path}: {man_path.stat().st_size:,} bytes, far more than a manifest has")
        data = man_path.read_bytes()
        check_json_bounds(data, "manifest", str(man_path))
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{man_path}: cannot read ({exc})") from None
    where = str(man_path)
    manifest = mf.Manifest.from_json(text, where)
    check_manifest(manifest, where)

    for rel in manifest.files:
        mf.safe_relative_path(root, rel, where)
    referenced = [manifest.tokenizer.file]
    for prec, pair in manifest.graphs.items():
        referenced += [g.file for g in mf.graph_specs(pair)]
    for rel in referenced:
        mf.safe_relative_path(root, rel, where)
        if rel not in manifest.files:
            raise BundleError(f"{where}: {rel} has no checksum in 'files'")
    bundle = Bundle(root, manifest)
    if precision is not None:
        bundle.graphs(precision)  # clear error listing what the bundle has
    for rel, digest in manifest.files.items():
        full = bundle.file(rel)
        if not full.is_file():
            raise BundleError(f"{full}: missing from the bundle (listed in {mf.MANIFEST_FILE})")
    graph_files = [r for r in referenced if r != manifest.tokenizer.file]
    bundle = Bundle(root, manifest, {rel: _external_files(root, rel, manifest) for rel in dict.fromkeys(graph_files)})
    if verify_checksums:
        to_check = [manifest.tokenizer.file]
        chosen = manifest.graphs.items() if precision is None else [(precision, manifest.graphs[precision])]
        for _, pair in chosen:  # the step's attention variants are checked when they are loaded
            to_check += [g.file for g in mf.graph_specs(pair, attentions=False)]
        bundle.verify_files(to_check)
    log.debug("loaded bundle %s (precisions: %s)", root, ", ".join(bundle.precisions))
    return bundle
