"""`edgecap feed SOURCE... --out DIR --ray [ADDRESS]`: the command-line side of the Ray path.

The options are `edgecap feed`'s (parsed in edgecap/feeds/command.py); this validates the bundle
and options on the driver before any cluster starts, then hands over to `run_ray_feed`.
"""

from __future__ import annotations

import argparse
import sys

import ray

from edgecap.cliargs import EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_OK, generation_options
from edgecap.feeds.output import feed_settings
from edgecap.feeds.pipeline import FeedConfig
from edgecap.feeds.sources import expand_sources
from edgecap.signals import EXIT_TERMINATED, Terminated

from .driver import SUMMARY, RayFeedConfig, RayProgress, run_ray_feed

GPU_BACKENDS = ("cuda", "ort-tensorrt", "tensorrt")


def _driver_captioner(args: argparse.Namespace):
    """A CPU Captioner on the driver: checks bundle and options, fixes the precision the actors run.

    With a GPU backend and no --precision, the precision is the one that backend would pick (the
    driver itself may have no GPU); actors get it explicitly so every one runs the same graphs.
    """
    from edgecap.bundle import load_bundle
    from edgecap.captioner import Captioner

    precision = args.precision
    if precision is None and args.backend in GPU_BACKENDS:
        from edgecap.gpu import precision_preference

        bundle = load_bundle(args.bundle, verify_checksums=False) if args.bundle else None
        if bundle is not None:
            precision = next((p for p in precision_preference(bundle, args.backend) if p in bundle.manifest.graphs), None)
    return Captioner(args.bundle, precision=precision, backend="cpu", threads=1)


def run_ray_command(args: argparse.Namespace) -> int:
    feed = FeedConfig(every=args.every, dedupe=args.dedupe, batch_size=args.batch_size,
                      max_frames=args.max_frames, fps=args.fps)
    feed.check()
    gpu = args.backend in GPU_BACKENDS
    actor_cpus = args.actor_cpus if args.actor_cpus is not None else float(args.threads or 1)
    cfg = RayFeedConfig(out=args.out, format=args.format, address=args.ray or None, actors=args.actors,
                        actor_cpus=actor_cpus, actor_gpus=args.actor_gpus if args.actor_gpus is not None else float(gpu),
                        overwrite=args.overwrite, vtt=args.vtt, srt=args.srt)
    cfg.check()
    options = generation_options(args)
    sources = expand_sources(args.sources)
    captioner = _driver_captioner(args)
    settings = feed_settings(captioner, feed, options, backend=args.backend or "auto", engine="ray")
    progress = RayProgress(sys.stderr, len(sources), quiet=args.quiet)
    try:
        summary = run_ray_feed(sources, args.bundle, captioner.preprocess_spec, settings, feed, cfg, options,
                               backend=args.backend, progress=progress)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (Terminated)
        terminated = isinstance(exc, Terminated)
        progress.print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: finished sources are in "
                       f"{args.out}; rerun the same command to continue")
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        progress.status.close()
        if ray.is_initialized():
            ray.shutdown()
    if not args.quiet:
        progress.print(
            f"ray: {summary['written']} sources written to {args.out} ({summary['frames']} frames), "
            f"{summary['skipped']} already complete, {summary['sources']} sources, {summary['seconds']:.1f} s "
            f"(start-up included), {summary['frames_per_second']:.1f} frames/s once running")
    failed = summary["failed"]
    if failed:
        progress.print(f"ray: {len(failed)} of {len(sources)} sources had problems (also in {args.out}/{SUMMARY}):")
        for entry in failed:
            more = len(entry["problems"]) - 1
            progress.print(f"  failed: {entry['problems'][0]}" + (f" (and {more} more)" if more else ""))
    return EXIT_INPUT_FAILED if failed else EXIT_OK
