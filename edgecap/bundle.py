"""Loading a bundle: every check happens here, before the first caption."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from .errors import BundleError

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

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest.graphs)

    def file(self, rel: str) -> Path:
        return mf.safe_relative_path(self.path, rel, str(self.path / mf.MANIFEST_FILE))

    def verify_files(self, rels: list[str]) -> None:
        """sha256 of these files, and of their graphs' external weights ("<graph>.onnx.data", as much
        the graph as the graph file), against the manifest."""
        files = self.manifest.files
        for rel in rels + [f for f in files if any(f.startswith(r + ".") for r in rels)]:
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
        text = man_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{man_path}: cannot read ({exc})") from None
    manifest = mf.Manifest.from_json(text, str(man_path))
    bundle = Bundle(root, manifest)

    where = str(man_path)
    for rel in manifest.files:
        mf.safe_relative_path(root, rel, where)
    referenced = [manifest.tokenizer.file]
    for prec, pair in manifest.graphs.items():
        referenced += [pair.encoder.file, pair.decoder.file]
        if pair.decoder_attentions is not None:
            referenced.append(pair.decoder_attentions.file)
    for rel in referenced:
        mf.safe_relative_path(root, rel, where)
        if rel not in manifest.files:
            raise BundleError(f"{where}: {rel} has no checksum in 'files'")
    if precision is not None:
        bundle.graphs(precision)  # clear error listing what the bundle has
    for rel, digest in manifest.files.items():
        full = bundle.file(rel)
        if not full.is_file():
            raise BundleError(f"{full}: missing from the bundle (listed in {mf.MANIFEST_FILE})")
    if verify_checksums:
        to_check = [manifest.tokenizer.file]
        chosen = manifest.graphs.items() if precision is None else [(precision, manifest.graphs[precision])]
        for _, pair in chosen:
            to_check += [pair.encoder.file, pair.decoder.file]
        bundle.verify_files(to_check)
    log.debug("loaded bundle %s (precisions: %s)", root, ", ".join(bundle.precisions))
    return bundle
