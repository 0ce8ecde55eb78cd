"""Offline batch captioning of camera feeds (``edgecap feed``, ``Captioner.caption_feed``).

Sources are video files and frame folders, sampled in time.

Pipeline: one background thread opens the sources one after the other, decodes (PyAV, imported
lazily: the ``[feeds]`` extra), samples one frame every ``every`` seconds of
presentation time, drops near-duplicates (dedupe) and preprocesses the rest; a bounded queue
feeds the model, which runs batches that may span several sources. Results come back in each
source's frame order.

Sampling: sample times are the grid 0, every, 2*every...; a frame is sampled when its pts is at
or past the next grid time not yet covered (so a frame is sampled at most once per grid slot).

Dedupe: a sampled frame whose 32x32 greyscale thumbnail differs from that of the last
*captioned* frame of its source by less than ``dedupe`` (mean absolute difference, pixels
scaled to 0..1) is not captioned again: it repeats that caption with ``repeat=True``. The
default, 0.01 (a 1% mean grey-level change), sits well above what compression and sensor noise
do to a static view once averaged into a thumbnail (< 0.005 in practice) while a new object
covering a few percent of the view usually exceeds it; 0 turns dedupe off.
"""

from .output import append_all, encode_records, load_records
from .pipeline import FeedConfig, FeedListener, caption_feed, run_feed, thumbnail
from .sources import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEDUPE,
    DEFAULT_EVERY,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FeedError,
    FeedProblem,
    FeedSource,
    FrameCaption,
    expand_sources,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DEDUPE",
    "DEFAULT_EVERY",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FeedConfig",
    "FeedError",
    "FeedListener",
    "FeedProblem",
    "FeedSource",
    "FrameCaption",
    "append_all",
    "caption_feed",
    "encode_records",
    "expand_sources",
    "load_records",
    "run_feed",
    "thumbnail",
]
