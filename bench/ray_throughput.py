"""Ray path vs `edgecap feed`: frames/s on the same videos and settings (issue 14's engine overhead).

    python bench/ray_throughput.py [--bundle DIR] [--videos 4] [--seconds 60] [--nodes 1|2]
                                   [--actors N] [--actor-cpus C] [--every S] [--batch-size N]

Writes --videos synthetic videos (scenes changing every 2 s) unless --video files are given, then:

* feed: `edgecap feed` on all of them (the Captioner loaded first, so its load is not timed);
* ray:  `edgecap feed --ray`'s pipeline on the same videos and settings, on a local Ray instance
  (--nodes 1) or on a two-node cluster on this machine (--nodes 2: `ray.cluster_utils.Cluster`,
  --cpus-per-node logical CPUs each), after a 2 s warm-up job on the same cluster: the time
  counted includes starting the Captioner actors and loading the bundle in each, not Ray's own
  start-up (a fleet's cluster is already running).

Prints frames/s of each and ray/feed.
Both write their results; dedupe is off so every sampled frame reaches the model. Not a test:
run it on a quiet machine (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feed_throughput import synthetic_video  # noqa: E402


def run_feed(videos: list[str], args: argparse.Namespace, out: Path) -> tuple[int, float]:
    from edgecap import Captioner
    from edgecap.feeds import FeedConfig, expand_sources, run_feed as feed

    cap = Captioner(args.bundle, precision=args.precision, threads=args.threads)
    cfg = FeedConfig(every=args.every, dedupe=0, batch_size=args.batch_size)
    t0 = time.perf_counter()
    n = 0
    with open(out, "w") as fh:  # written like the command does, minus the fsyncs' noise
        for batch in feed(cap, expand_sources(videos), cfg):
            n += len(batch)
            fh.writelines(f"{r}\n" for r in batch)
    return n, time.perf_counter() - t0


def run_ray(videos: list[str], args: argparse.Namespace, out: Path, address: str | None,
            warmup: str) -> tuple[int, float, float, str]:
    """The measured run goes on a cluster that already ran a short warm-up job (Ray's worker
    processes started and imported): what a running cluster costs per job, actor start-up and
    bundle loads included."""
    import ray

    from edgecap import Captioner
    from edgecap.feeds import FeedConfig, expand_sources
    from edgecap.feeds.output import feed_settings
    from edgecap.ray import RayFeedConfig, run_ray_feed
    from edgecap.ray.driver import default_actors

    cap = Captioner(args.bundle, precision=args.precision, backend="cpu", threads=1)
    feed = FeedConfig(every=args.every, dedupe=0, batch_size=args.batch_size)
    settings = feed_settings(cap, feed, None)
    try:
        for run, inputs in (("warm-up", [warmup]), ("measured", videos)):
            cfg = RayFeedConfig(out=str(out / run), address=address, actors=args.actors, actor_cpus=args.actor_cpus)
            t0 = time.perf_counter()
            summary = run_ray_feed(expand_sources(inputs), args.bundle, cap.preprocess_spec, settings, feed, cfg)
            secs = time.perf_counter() - t0
        actors = cfg.actors or default_actors(cfg, ray.cluster_resources())
        where = f"{len(ray.nodes())} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs, {actors} actors"
    finally:
        ray.shutdown()
    return summary["frames"], secs, summary["frames_per_second"], where


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="bundle directory (default: the bundled demo model)")
    ap.add_argument("--precision")
    ap.add_argument("--video", action="append", help="a video file (repeatable; default: synthetic ones)")
    ap.add_argument("--videos", type=int, default=4, help="synthetic videos (default: 4)")
    ap.add_argument("--seconds", type=int, default=60, help="synthetic video length (default: 60)")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="edgecap feed's ONNX Runtime threads (default: all)")
    ap.add_argument("--actors", type=int, default=None, help="Ray: Captioner actors (default: the command's)")
    ap.add_argument("--actor-cpus", type=float, default=1.0, help="Ray: CPUs (= threads) per actor (default: 1)")
    ap.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    ap.add_argument("--cpus-per-node", type=int, default=None, help="--nodes 2: logical CPUs per node (default: cores/2)")
    ap.add_argument("--skip-feed", action="store_true", help="measure the Ray path only")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        videos = args.video or [str(synthetic_video(Path(tmp) / f"cam{i}.mp4", args.seconds, args.fps, args.side))
                                for i in range(args.videos)]
        cluster = None
        address = None
        if args.nodes == 2:
            from ray.cluster_utils import Cluster

            per_node = args.cpus_per_node or max(1, (os.cpu_count() or 2) // 2)
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per_node, "include_dashboard": False})
            cluster.add_node(num_cpus=per_node)
            cluster.wait_for_nodes()
            address = cluster.address
        try:
            print(f"videos: {len(videos)} x {args.seconds} s, every {args.every:g} s, batch {args.batch_size}, dedupe off")
            feed_fps = None
            if not args.skip_feed:
                n, secs = run_feed(videos, args, Path(tmp) / "feed.jsonl")
                feed_fps = n / secs
                print(f"edgecap feed:            {feed_fps:8.1f} frames/s ({n} frames, {secs:.1f} s, "
                      f"threads {args.threads or 'all'})")
            warmup = str(synthetic_video(Path(tmp) / "warmup.mp4", 2, args.fps, args.side))
            n, secs, running, where = run_ray(videos, args, Path(tmp) / "ray", address, warmup)
            print(f"ray ({where}): {n / secs:8.1f} frames/s ({n} frames, {secs:.1f} s on a warm cluster; "
                  f"{running:.1f} frames/s after the first captions came back)")
            if feed_fps:
                print(f"ray / feed:              {n / secs / feed_fps:8.3f}  (target >= 0.8)")
        finally:
            if cluster is not None:
                cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
