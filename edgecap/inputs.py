"""Which files `edgecap caption` reads: paths, directories, globs, and `-` (a list of paths on stdin).

A PDF becomes one input per page, named `paper.pdf#page=3` (edgecap.pdf); such a name given as an
input is that one page.

Each input becomes `(path, problem)`: `problem` is None for a regular file to caption, else one line
saying why it is not one (missing, a loop of symbolic links, a FIFO, a URL...). The command reports
those and goes on with the rest, so expansion never raises for a bad input.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import stat
import sys
from typing import Iterable, Iterator, Optional, Sequence, TextIO

from . import pdf
from .errors import ImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DOCUMENT_EXTENSIONS = pdf.PDF_EXTENSIONS  # inputs of several pages each
STDIN = "-"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MISSING = "file not found"

Input = tuple[str, Optional[str]]  # (path, problem or None)


def expand_inputs(patterns: Sequence[str], recursive: bool = False, stdin: TextIO | None = None) -> Iterator[Input]:
    """(path, problem) per input, in the order given; directories give their image files, sorted.

    `-` reads one path per line from `stdin` (default: sys.stdin); those are taken literally (files
    or directories, never glob patterns), as `find ... | edgecap caption -` expects.
    """
    for pattern in patterns:
        if pattern == STDIN:
            for line in stdin if stdin is not None else sys.stdin:
                name = line.rstrip("\r\n")  # only the line end: spaces can be part of a file name
                if name.strip():
                    yield from _expand(name, recursive, globs=False)
        else:
            yield from _expand(pattern, recursive, globs=True)


def path_problem(path: str) -> str | None:
    """Why `path` is not a regular file that can be opened (None: it is one). Directories count as
    problems here; callers handle them before asking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        return _MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (too many levels of symbolic links)"
        if exc.errno == errno.ENOTDIR:
            return _MISSING
        if exc.errno == errno.EACCES:
            return "permission denied"
        return f"cannot access: {exc.strerror or exc}"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    # Opening a FIFO would block until a writer appears, and a device may never end: refuse both.
    return f"not a regular file ({_kind(st.st_mode)})"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def _file_entries(path: str, problem: str | None) -> list[Input]:
    """A file's inputs: itself, or one per page of a PDF."""
    if problem is not None or not pdf.is_pdf(path):
        return [(path, problem)]
    try:
        count = pdf.page_count(path)
    except ImageError as exc:
        return [(path, exc.problem)]
    return [(pdf.page_name(path, page), None) for page in range(1, count + 1)]


def _page_entry(name: str) -> Input | None:
    """`paper.pdf#page=3` naming a page of an existing PDF: that input (None if it names none)."""
    ref = pdf.split_page_name(name)
    if ref is None or path_problem(ref[0]) == _MISSING:
        return None
    problem = path_problem(ref[0])
    if problem is None:
        try:
            count = pdf.page_count(ref[0])
        except ImageError as exc:
            problem = exc.problem
        else:
            if ref[1] > count:
                problem = f"no such page: the PDF has {count} page{'s' * (count != 1)}"
    return name, problem


def _expand(pattern: str, recursive: bool, globs: bool) -> Iterator[Input]:
    if os.path.isdir(pattern):
        yield from _scan_dir(pattern, recursive)
        return
    problem = path_problem(pattern)
    page = _page_entry(pattern) if problem == _MISSING else None
    if page is not None:
        yield page
    elif problem != _MISSING:
        yield from _file_entries(pattern, problem)
    elif globs and glob.has_magic(pattern):
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            yield pattern, "no files match this pattern"
        for match in matches:
            if not os.path.isdir(match):  # a glob names files; directories it matches are not images
                yield from _file_entries(match, path_problem(match))
    elif _URL.match(pattern):
        yield pattern, "URLs are not fetched; download the image first (e.g. curl -O URL) and pass the file"
    else:
        yield pattern, _MISSING


def _scan_dir(root: str, recursive: bool) -> Iterator[Input]:
    """Image files and PDFs (by extension) in `root`, or in its whole tree when `recursive`, sorted by
    path, a PDF as its pages.

    Symbolic links to directories are followed once each (a link back up the tree is not a loop
    here); an image-named entry that is not a readable regular file is reported, not skipped.
    """
    found: list[Input] = []
    seen: set[tuple[int, int]] = set()
    has_subdirs = False

    def unreadable(exc: OSError) -> None:
        found.append((exc.filename or root, f"cannot read directory: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        has_subdirs = has_subdirs or bool(dirnames)
        if not recursive:
            dirnames[:] = []
        found += _image_entries(dirpath, filenames)
    found.sort(key=lambda item: item[0])
    if not found:
        hint = " (it has subdirectories: pass --recursive to scan them)" if has_subdirs and not recursive else ""
        yield root, f"directory contains no image files{hint}"
    for path, problem in found:
        yield from _file_entries(path, problem)


def _image_entries(dirpath: str, filenames: Iterable[str]) -> list[Input]:
    out = []
    for name in filenames:
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS | DOCUMENT_EXTENSIONS:
            path = os.path.join(dirpath, name)
            out.append((path, path_problem(path)))
    return out
