"""Where a bundle's encoder and decoder-step time goes, by ONNX Runtime's own profiler (issue 20).

    python bench/profile_graphs.py BUNDLE [--precision int8] [--batch 1] [--beams 1] [--steps 16] [--threads 2]

Captions random images with ONNX Runtime profiling on, then reports, per graph: kernels per run
(what ONNX Runtime executes after its own fusions), and time per operator type. The decoder figures
are per step, averaged over a caption of `--steps` forced tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecap import Captioner, GenerationOptions


def _profiled(profile_dir: str):
    """Make every session edgecap creates from here on profile into `profile_dir`."""
    original = ort.InferenceSession.__init__

    def init(self, path, sess_options=None, providers=None, **kw):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.enable_profiling = True
        sess_options.profile_file_prefix = os.path.join(profile_dir, Path(str(path)).stem)
        original(self, path, sess_options=sess_options, providers=providers, **kw)

    ort.InferenceSession.__init__ = init


def summarize(profile: Path, runs: int) -> dict:
    events = json.loads(profile.read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_op: dict[str, float] = defaultdict(float)
    count: Counter = Counter()
    for e in kernels:
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] += e["dur"]
        count[op] += 1
    total = sum(by_op.values())
    return {
        "runs": runs,
        "kernels_per_run": round(len(kernels) / max(1, runs), 1),
        "kernel_ms_per_run": round(total / 1000 / max(1, runs), 3),
        "by_op": {op: {"ms_per_run": round(us / 1000 / runs, 4), "kernels_per_run": round(count[op] / runs, 1)}
                  for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--precision", default="int8")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--plain", action="store_true", help="profile the bundle's plain graphs (default: the fused ones)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="edgecap-profile-")
    _profiled(work)
    cap = Captioner(args.bundle, precision=args.precision, backend="cpu", threads=args.threads,
                    fused=False if args.plain else None)
    images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(args.batch)]
    opts = GenerationOptions(num_beams=args.beams, max_new_tokens=args.steps, min_new_tokens=args.steps)
    cap.caption(images, options=opts)  # warm-up (profiled too; subtracted below)
    for _ in range(args.repeat):
        cap.caption(images, options=opts)
    runs = args.repeat + 1
    # end profiling: every session of the captioner
    sessions = [cap._encoder.session]
    with cap.step_decoder() as decoder:
        sessions.append(decoder.session)
    result = {"bundle": args.bundle, "precision": cap.precision, "graphs": "fused" if cap.fused else "plain",
              "batch": args.batch, "beams": args.beams,
              "steps": args.steps, "threads": args.threads}
    for role, session, per in (("encoder", sessions[0], runs), ("decoder_step", sessions[1], runs * args.steps)):
        result[role] = summarize(Path(session.end_profiling()), per)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
