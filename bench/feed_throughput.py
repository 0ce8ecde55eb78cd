"""Feed throughput vs the model's own: is the model ever waiting on the decoder?

    python bench/feed_throughput.py --bundle DIR [--video FILE] [--every S] [--batch-size N]

Measures, on the same sampled frames and batch size (dedupe off, so every frame hits the model):

* model: `Captioner.caption(frames)` on the frames already decoded into memory;
* feed:  `Captioner.caption_feed(video)`: decode + sample + preprocess in the background thread,
  batched model calls in the foreground.

and prints both in frames/s and feed/model (target >= 0.9). Without --video it writes a short
synthetic video (scenes changing every 2 s) to a temporary folder. Each is run --rounds times
(alternating) and the best round counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_video(path: Path, seconds: int, fps: int, side: int) -> Path:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width = s.height = side
        s.pix_fmt = "yuv420p"
        scene = None
        for i in range(seconds * fps):
            if i % (2 * fps) == 0:
                base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                scene = np.kron(base, np.ones((side // 8, side // 8, 1), np.uint8))
            for p in s.encode(av.VideoFrame.from_ndarray(scene, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="bundle directory (default: the bundled demo model)")
    ap.add_argument("--precision")
    ap.add_argument("--video", help="video file (default: a synthetic one)")
    ap.add_argument("--seconds", type=int, default=20, help="synthetic video length (default: 20)")
    ap.add_argument("--fps", type=int, default=10, help="synthetic video frame rate (default: 10)")
    ap.add_argument("--side", type=int, default=256, help="synthetic video frame side in px (default: 256)")
    ap.add_argument("--every", type=float, default=0.25, help="seconds between samples (default: 0.25)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)

    from edgecap import Captioner
    from edgecap.feeds import expand_sources
    from edgecap.feeds.sources import _Decoded, iter_sampled

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else synthetic_video(Path(tmp) / "feed.mp4", args.seconds, args.fps, args.side)
        cap = Captioner(args.bundle, precision=args.precision, threads=args.threads)
        (src,) = expand_sources(str(video))
        frames = [item.load() for item in iter_sampled(src, args.every, max_frames=args.max_frames)
                  if isinstance(item, _Decoded)]
        if not frames:
            print(f"{video}: no frames decoded", file=sys.stderr)
            return 1
        cap.caption(frames[: args.batch_size], batch_size=args.batch_size)  # warm-up
        model_best = feed_best = float("inf")
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            cap.caption(frames, batch_size=args.batch_size)
            model_best = min(model_best, time.perf_counter() - t0)
            t0 = time.perf_counter()
            n = sum(1 for _ in cap.caption_feed(video, every=args.every, dedupe=0, batch_size=args.batch_size,
                                                max_frames=args.max_frames))
            feed_best = min(feed_best, time.perf_counter() - t0)
            assert n == len(frames), (n, len(frames))
        model_fps, feed_fps = len(frames) / model_best, len(frames) / feed_best
        print(f"video: {video} ({len(frames)} sampled frames, every {args.every:g} s, "
              f"{frames[0].shape[1]}x{frames[0].shape[0]})")
        print(f"model: {cap.bundle.manifest.source.model} ({cap.precision}, batch {args.batch_size}, "
              f"threads {args.threads or 'all'})")
        print(f"model (frames in memory): {model_fps:8.1f} frames/s")
        print(f"feed  (decode + model):   {feed_fps:8.1f} frames/s")
        print(f"ratio feed/model:         {feed_fps / model_fps:8.3f}  (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
