"""Peak resident memory of a caption under each ONNX Runtime allocation mode, and its speed (issue 20).

    python bench/memory.py BUNDLE [--precision int8] [--batch 1,8] [--threads 2] [--json out.json]

Each mode runs in a process of its own (peak RSS is per process): a Captioner built with that mode
(`backends.SessionOptions.memory`), a warm-up caption, then timed captions of 16 forced tokens. The
modes: ONNX Runtime's default arena with memory patterns, the arena without patterns, no arena.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, statistics, sys, time
import numpy as np
from edgecap.captioner import Captioner
bundle, precision, mode, batch, threads, fused = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
cap = Captioner(bundle, precision=precision, backend="cpu", threads=threads, fused=None if fused == "default" else False,
                memory=mode)
images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(batch)]
kw = dict(max_new_tokens=16, min_new_tokens=16)
cap.caption(images, **kw)
times = []
for _ in range(5):
    t = time.perf_counter(); cap.caption(images, **kw); times.append(time.perf_counter() - t)
print(json.dumps({"ms": 1000 * statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    from edgecap.backends import MEMORY_MODES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--precision", default="int8")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--graphs", default="default,plain")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    for graphs in args.graphs.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            for mode in MEMORY_MODES:
                out = subprocess.run([sys.executable, "-c", CHILD, args.bundle, args.precision, mode, str(batch),
                                      str(args.threads), graphs], capture_output=True, text=True, check=True)
                row = {"graphs": graphs, "batch": batch, "mode": mode, **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
