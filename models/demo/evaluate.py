"""Evaluate a demo captioner on held-out synthetic scenes: exact match and corpus BLEU-4.

Two pluggable captioners, each a function ``list[PIL.Image] -> list[str]``:

* ``--checkpoint DIR``: the Hugging Face checkpoint written by train.py, captioned with
  ``VisionEncoderDecoderModel.generate()`` (greedy, the saved generation config);
* ``--bundle DIR [--precision fp32]``: an exported edgecap bundle, captioned with
  ``edgecap.Captioner(DIR, precision=...).caption(images)`` (results carry ``.text``).

Usage::

    python models/demo/evaluate.py --checkpoint models/demo/checkpoint --seed 1234 --count 500
    python models/demo/evaluate.py --bundle DIR --precision fp32 --seed 1234 --count 500

Scenes come from ``scenes.generate(seed, count, size)`` (``--size`` defaults to 96, the demo
model's input size). Prints exact match (overall and by number of objects), BLEU-4 and a few
mistakes; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
CaptionFn = Callable[[Sequence["object"]], list[str]]


def load_scenes():
    if "demo_scenes" in sys.modules:
        return sys.modules["demo_scenes"]
    spec = importlib.util.spec_from_file_location("demo_scenes", HERE / "scenes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["demo_scenes"] = mod
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# Metrics


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-max_n (one reference per hypothesis, uniform weights, standard brevity
    penalty, no smoothing), in [0, 1]."""
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len += len(h)
        ref_len += len(r)
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return sum(" ".join(h.split()) == r for h, r in zip(hypotheses, references, strict=True)) / len(references)


# --------------------------------------------------------------------------------------------
# Captioners


def hf_captioner(checkpoint: Path, batch_size: int = 50) -> CaptionFn:
    import torch
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(checkpoint).eval()
    processor = ViTImageProcessor.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def caption(images):
        texts: list[str] = []
        for i in range(0, len(images), batch_size):
            pixel_values = processor(images=list(images[i : i + batch_size]), return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                ids = model.generate(pixel_values=pixel_values, num_beams=1, do_sample=False)
            texts.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
        return texts

    return caption


def bundle_captioner(bundle: Path, precision: str = "fp32") -> CaptionFn:
    from edgecap import Captioner

    captioner = Captioner(str(bundle), precision=precision)

    def caption(images):
        return [r.text for r in captioner.caption(list(images))]

    return caption


def evaluate(caption_fn: CaptionFn, seed: int = 1234, count: int = 500, size: int = 96) -> dict:
    sc = load_scenes()
    scenes = sc.generate_scenes(seed, count)
    images = [sc.render(s, size) for s in scenes]
    refs = [sc.caption(s) for s in scenes]
    t0 = time.time()
    hyps = [" ".join(h.split()) for h in caption_fn(images)]
    seconds = time.time() - t0
    by_objects = {}
    for n in (1, 2, 3):
        pairs = [(h, r) for h, r, s in zip(hyps, refs, scenes) if len(s.objects) == n]
        if pairs:
            by_objects[n] = {"count": len(pairs), "exact_match": exact_match(*zip(*pairs))}
    return {
        "seed": seed,
        "count": count,
        "size": size,
        "exact_match": exact_match(hyps, refs),
        "bleu4": corpus_bleu(hyps, refs),
        "by_objects": by_objects,
        "caption_seconds": seconds,
        "mistakes": [{"reference": r, "hypothesis": h} for h, r in zip(hyps, refs) if h != r],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Exact match and BLEU-4 of a demo captioner.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Hugging Face checkpoint dir (train.py output)")
    src.add_argument("--bundle", type=Path, help="edgecap bundle dir (runs edgecap.Captioner)")
    p.add_argument("--precision", default="fp32", help="bundle precision (with --bundle)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--size", type=int, default=96, help="rendered scene size in pixels")
    p.add_argument("--threads", type=int, default=None, help="torch threads (--checkpoint)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.checkpoint is not None:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        fn, source = hf_captioner(args.checkpoint), f"checkpoint {args.checkpoint}"
    else:
        fn, source = bundle_captioner(args.bundle, args.precision), f"bundle {args.bundle} ({args.precision})"
    res = evaluate(fn, args.seed, args.count, args.size)
    print(f"{source}: seed {args.seed} x {args.count} scenes at {args.size} px")
    print(f"exact match {res['exact_match']:.4f}  BLEU-4 {res['bleu4']:.4f}  ({res['caption_seconds']:.1f} s)")
    for n, d in res["by_objects"].items():
        print(f"  {n} object(s): {d['count']} scenes, exact match {d['exact_match']:.4f}")
    for m in res["mistakes"][:10]:
        print(f"  ref: {m['reference']}\n  hyp: {m['hypothesis']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
