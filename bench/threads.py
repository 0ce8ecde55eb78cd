"""One Captioner shared by threads: what per-call decoder states cost and buy (issue 18).

Three ways to serve N caller threads with one model, measured side by side in one run:

  per-call   one Captioner, each call takes its own decoder state from the pool (what edgecap does)
  lock       one Captioner behind one lock (the alternative design: calls take turns)
  pool       N Captioners, one per caller (N sessions: N copies of the weights)

and the batch-1 latency of a single caller, which the pool must not slow down.

    python bench/threads.py --bundle BUNDLE [--callers 4] [--threads 1] [--calls 8] [--json out.json]

Run alone on a quiet machine; numbers from a loaded machine mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgecap import Captioner


def _images(cap: Captioner, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(count)]


def single_caller(cap: Captioner, image: np.ndarray, repeat: int, **gen) -> dict:
    cap.caption(image, **gen)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cap.caption(image, **gen)
        times.append(time.perf_counter() - t0)
    return {"p50_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}


def throughput(call, callers: int, calls: int) -> dict:
    """Images/s with `callers` threads each making `calls` calls of call(i)."""
    call(0)  # warm-up
    start = threading.Barrier(callers)

    def run(i: int) -> None:
        start.wait()
        for _ in range(calls):
            call(i)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(run, range(callers)))
    seconds = time.perf_counter() - t0
    return {"images_per_s": callers * calls / seconds, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="bundle directory (default: the demo bundle)")
    p.add_argument("--precision", default=None)
    p.add_argument("--callers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per Captioner")
    p.add_argument("--calls", type=int, default=8, help="calls per caller")
    p.add_argument("--repeat", type=int, default=10, help="timed single-caller calls")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--json")
    args = p.parse_args(argv)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    shared = Captioner(args.bundle, precision=args.precision, backend="cpu", threads=args.threads)
    images = _images(shared, args.callers)
    result = {"bundle": str(shared.bundle.path), "precision": shared.precision, "callers": args.callers,
              "threads_per_session": args.threads, "new_tokens": args.new_tokens}
    result["single_caller_batch1"] = single_caller(shared, images[0], args.repeat, **gen)
    result["per_call_states"] = throughput(lambda i: shared.caption(images[i], **gen), args.callers, args.calls)
    result["per_call_states"]["states"] = shared._decoders.size
    lock = threading.Lock()

    def locked(i: int) -> None:
        with lock:
            shared.caption(images[i], **gen)

    result["one_lock"] = throughput(locked, args.callers, args.calls)
    own = [Captioner(args.bundle, precision=args.precision, backend="cpu", threads=args.threads)
           for _ in range(args.callers)]
    result["captioner_per_caller"] = throughput(lambda i: own[i].caption(images[i], **gen), args.callers, args.calls)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
