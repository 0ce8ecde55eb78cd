"""Donut-geometry timings: encoder and decoder-step ms, edgecap vs PyTorch, and the cost of a step
at step 10 vs step 500 with max_new_tokens=1024 (the growing cache) vs a cache sized for the limit.

    python bench/donut_geometry.py [--workdir DIR] [--threads N] [--repeat N] [--json OUT]

Random weights with donut-base's geometry (export/synthetic.py). The bundle is exported once
(fp32, int8) and cached in --workdir. Run it alone on the machine: it is minutes of work.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _ms(fn, repeat: int, warmup: int = 1) -> float:
    from edgecap.bench import time_calls

    return statistics.median(time_calls(fn, warmup, repeat))


def step_times(dec, encoded: dict, at: tuple[int, ...], max_steps: int, fixed: bool) -> dict[int, float]:
    """ms of single decoder steps at the given positions (median of 5 around each), batch 1."""
    dec.set_encoded(encoded)
    dec.begin(np.zeros(1, dtype=np.int64), max_steps)
    if fixed:  # what edgecap did before the buckets: one cache of max_new_tokens slots
        dec._allocate(1, max_steps)
    out, tok = {}, np.array([5], dtype=np.int64)
    last = max(at) + 3
    samples: dict[int, list[float]] = {}
    for t in range(last):
        t0 = time.perf_counter()
        dec.step(tok, t)
        dt = (time.perf_counter() - t0) * 1e3
        for a in at:
            if a - 2 <= t <= a + 2:
                samples.setdefault(a, []).append(dt)
    for a in at:
        out[a] = statistics.median(samples[a])
    return out


def torch_step_times(model, pixels, at: tuple[int, ...]) -> dict[int, float]:
    import torch
    from transformers import DynamicCache, EncoderDecoderCache

    with torch.no_grad():
        enc = model.encoder(pixel_values=torch.from_numpy(pixels)).last_hidden_state
        if getattr(model, "enc_to_dec_proj", None) is not None:
            enc = model.enc_to_dec_proj(enc)
        # self-attention and cross-attention caches apart, as generate() builds them (the cross K/V
        # are projected once, at the first step)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        ids = torch.tensor([[0]])
        samples: dict[int, list[float]] = {}
        for t in range(max(at) + 3):
            t0 = time.perf_counter()
            out = model.decoder(input_ids=ids, encoder_hidden_states=enc, past_key_values=cache, use_cache=True)
            dt = (time.perf_counter() - t0) * 1e3
            cache = out.past_key_values
            ids = torch.tensor([[5]])
            for a in at:
                if a - 2 <= t <= a + 2:
                    samples.setdefault(a, []).append(dt)
    return {a: statistics.median(v) for a, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(Path.home() / ".cache" / "edgecap" / "bench" / "donut-base"))
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--precisions", default="fp32,int8", help="comma-separated (default: fp32,int8)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from PIL import Image

    from edgecap import Captioner
    from edgecap_export.synthetic import donut_base

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    precisions = tuple(dict.fromkeys(["fp32", *args.precisions.split(",")]))
    ckpt, bundle = work / "checkpoint", work / ("bundle-" + "-".join(precisions))
    if not (ckpt / "config.json").is_file():
        donut_base(ckpt)
    results: dict = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    if not (bundle / "manifest.json").is_file():
        evals = work / "eval"
        evals.mkdir(parents=True, exist_ok=True)
        for i in range(1):  # one eval image: the gate is off, the figure only recorded
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (640, 480, 3), dtype=np.uint8)).save(evals / f"{i}.png")
        # in a process of its own, so that its peak memory is measured apart (issue 20: within 24 GiB)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgecap", "export", str(ckpt), str(bundle), "--precision",
                        ",".join(precisions), "--min-agreement", "0", "--verify-images", "1", "--eval-images",
                        str(evals)], check=True)
        results["export-seconds"] = round(time.perf_counter() - t0, 1)
        results["export-peak-rss-gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)
    from transformers import VisionEncoderDecoderModel

    pixels = None
    at = (10, 500)
    for precision in precisions:
        cap = Captioner(bundle, precision=precision, backend="cpu", threads=args.threads)
        if pixels is None:
            pixels = cap.preprocess([np.random.default_rng(0).integers(0, 256, (2560, 1920, 3), dtype=np.uint8)])
        encoded = cap.encode(pixels)
        results[f"edgecap-{precision}-encoder-ms"] = _ms(lambda: cap.encode(pixels), args.repeat)
        with cap.step_decoder() as dec:
            grow = step_times(dec, encoded, at, 1024, fixed=False)
            fixed = step_times(dec, encoded, at, 1024, fixed=True)
        for a in at:
            results[f"edgecap-{precision}-step{a}-ms"] = grow[a]
            results[f"edgecap-{precision}-fixed1024-step{a}-ms"] = fixed[a]
        results["edgecap-peak-rss-gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(json.dumps(results), flush=True)  # the edgecap half, even if the PyTorch half fails
    model = VisionEncoderDecoderModel.from_pretrained(ckpt).eval()  # after edgecap's half: its peak RSS is its own
    with torch.no_grad():
        results["pytorch-fp32-encoder-ms"] = _ms(lambda: model.encoder(pixel_values=torch.from_numpy(pixels)), args.repeat)
    for a, v in torch_step_times(model, pixels, at).items():
        results[f"pytorch-fp32-step{a}-ms"] = v
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
