"""The errors edgecap raises on purpose: each carries one line a user can act on."""

from __future__ import annotations


class EdgecapError(Exception):
    """Base class: the message is a single line naming the file (if any) and the problem."""


class BundleError(EdgecapError):
    """A bundle directory that cannot be used: missing file, bad manifest, checksum mismatch..."""


class ImageError(EdgecapError):
    """An input image that cannot be read: missing, empty, not an image, truncated, too large."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class UnsupportedModelError(EdgecapError):
    """A model family (encoder or decoder type) that edgecap cannot export or run."""


class OptionsError(EdgecapError, ValueError):
    """Generation or runtime options that contradict each other or the bundle (a ValueError too,
    as Python callers expect of a bad argument)."""
