"""Hold exported graphs to PyTorch (logits step by step, greedy tokens end to end) and reduced
precisions to the fp32 graphs (caption agreement).

Everything runs through the runtime itself (`edgecap.Captioner`), so what is checked is exactly
what users will run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecap import Captioner, GenerationOptions
from edgecap import manifest as mf
from edgecap.preprocess import PreprocessSpec, preprocess


def random_images(spec: PreprocessSpec, count: int, seed: int = 0) -> np.ndarray:
    """Deterministic images (smooth colour fields + noise) run through the real preprocessing."""
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, size=(3, 1, 1)) * (1 - xx) + rng.uniform(0, 255, size=(3, 1, 1)) * yy
        noise = rng.normal(0, 30, size=(3, h, w))
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    return preprocess(images, spec)


def _cut(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def torch_greedy(hf_model, pixels: np.ndarray, gen: mf.Generation) -> list[list[int]]:
    with torch.no_grad():
        out = hf_model.generate(
            pixel_values=torch.from_numpy(pixels),
            num_beams=1,
            do_sample=False,
            max_new_tokens=gen.max_new_tokens,
            min_new_tokens=gen.min_new_tokens,
            no_repeat_ngram_size=gen.no_repeat_ngram_size,
            decoder_start_token_id=gen.decoder_start_token_id,
            eos_token_id=gen.eos_token_ids or None,
            pad_token_id=gen.pad_token_id,
        )
    eos = set(gen.eos_token_ids)
    return [_cut(row[1:], eos) for row in out.tolist()]


def agreement(ours: Sequence[Sequence[int]], ref: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(token agreement, caption agreement) of two lists of token sequences."""
    agree = total = 0
    for a, b in zip(ours, ref):
        total += max(len(a), len(b))
        agree += sum(1 for x, y in zip(a, b) if x == y)
    equal = sum(1 for a, b in zip(ours, ref) if list(a) == list(b))
    return agree / max(1, total), equal / max(1, len(ref))


def greedy_tokens(cap: Captioner, pixels: np.ndarray, batch: int = 8) -> list[tuple[int, ...]]:
    out = []
    for i in range(0, len(pixels), batch):
        out += [h[0].token_ids for h in cap.decode(cap.encode(pixels[i : i + batch]), GenerationOptions(num_beams=1))]
    return out


def max_logit_diff(hf_model, cap: Captioner, pixels: np.ndarray, ref: list[list[int]], gen: mf.Generation) -> float:
    """Largest |logit| difference to PyTorch, teacher-forced along PyTorch's greedy tokens."""
    count = len(ref)
    steps = max(len(r) for r in ref)
    seqs = np.full((count, steps + 1), gen.pad_token_id or 0, dtype=np.int64)
    seqs[:, 0] = gen.decoder_start_token_id
    for i, r in enumerate(ref):
        seqs[i, 1 : 1 + len(r)] = r
    with torch.no_grad():
        torch_logits = hf_model(
            pixel_values=torch.from_numpy(pixels), decoder_input_ids=torch.from_numpy(seqs[:, :steps])
        ).logits.float().numpy()
    decoder = cap._decoder
    decoder.set_encoded(cap.encode(pixels))
    decoder.begin(np.arange(count), steps)
    worst = 0.0
    for t in range(steps):
        logits = decoder.step(seqs[:, t], t)
        for i, r in enumerate(ref):
            if t < len(r):  # positions after a row's eos are padding that generate() never feeds
                worst = max(worst, float(np.abs(logits[i] - torch_logits[i, t]).max()))
    return worst


def verify_fp32(hf_model, bundle_dir: Path, pixels: np.ndarray, gen: mf.Generation) -> mf.Verification:
    ref = torch_greedy(hf_model, pixels, gen)
    cap = Captioner(bundle_dir, precision="fp32", backend="cpu", verify_checksums=False)
    tok, capt = agreement(greedy_tokens(cap, pixels), ref)
    return mf.Verification("pytorch", len(pixels), max_logit_diff(hf_model, cap, pixels, ref, gen), tok, capt)


def verify_reduced(
    hf_model, bundle_dir: Path, precision: str, verify_pixels: np.ndarray, eval_pixels: np.ndarray, gen: mf.Generation
) -> mf.Verification:
    fp32 = Captioner(bundle_dir, precision="fp32", backend="cpu", verify_checksums=False)
    cap = Captioner(bundle_dir, precision=precision, backend="cpu", verify_checksums=False)
    tok, capt = agreement(greedy_tokens(cap, eval_pixels), greedy_tokens(fp32, eval_pixels))
    diff = max_logit_diff(hf_model, cap, verify_pixels, torch_greedy(hf_model, verify_pixels, gen), gen)
    return mf.Verification("fp32", len(eval_pixels), diff, tok, capt)


def calibration_feeds(bundle_dir: Path, pixels: np.ndarray, batch: int = 4) -> tuple[list[dict], list[dict]]:
    """(encoder feeds, decoder-step feeds) recorded while the fp32 graphs caption `pixels`."""
    cap = Captioner(bundle_dir, precision="fp32", backend="cpu", verify_checksums=False)
    enc_feeds, dec_feeds = [], []
    decoder = cap._decoder
    real_step = decoder.step

    def recording_step(tokens, step):
        logits = real_step(tokens, step)  # sets decoder._feeds for this step, then runs it
        dec_feeds.append({k: np.array(v, copy=True) for k, v in decoder._feeds.items()})
        return logits

    decoder.step = recording_step
    try:
        for i in range(0, len(pixels), batch):
            chunk = np.ascontiguousarray(pixels[i : i + batch])
            enc_feeds.append({mf.PIXEL_VALUES: chunk})
            cap.decode(cap.encode(chunk), GenerationOptions(num_beams=1))
    finally:
        decoder.step = real_step
    return enc_feeds, dec_feeds
