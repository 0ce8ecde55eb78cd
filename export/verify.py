"""Hold exported graphs to PyTorch (logits step by step, greedy tokens end to end) and reduced
precisions to the fp32 graphs (teacher-forced next-token agreement and KL, caption agreement).

Everything runs through the runtime itself (`edgecap.Captioner`), so what is checked is exactly
what users will run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecap import Captioner, GenerationOptions, decoding
from edgecap import manifest as mf
from edgecap.decoding import log_softmax
from edgecap.preprocess import PreprocessSpec, preprocess

# fp32's top choice must beat its runner-up by this many nats (e: 2.7x as likely) for a step to
# count as decisive in the precision gate; see manifest.Verification.
DECISIVE_MARGIN = 1.0


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


# Verification decodes at most this many tokens per image (ExportOptions.verify_steps): past the self-
# attention cache's growth from 16 to 32 to 64 slots, which is where a cache bug would show, while a
# Donut or Nougat export no longer decodes thousands of positions per image (issue 19: 8.5 to 24 min).
VERIFY_STEPS = 48


def bounded(gen: mf.Generation, steps: int | None) -> mf.Generation:
    """The generation defaults with max_new_tokens (and min_new_tokens) cut to `steps` (None/0: as is)."""
    if not steps or gen.max_new_tokens <= steps:
        return gen
    return mf.Generation(**{**gen.__dict__, "max_new_tokens": steps, "min_new_tokens": min(gen.min_new_tokens, steps)})


def torch_greedy(hf_model, pixels: np.ndarray, gen: mf.Generation) -> list[list[int]]:
    from transformers.utils import logging as hf_logging

    # generate() warns about our explicit max_new_tokens beside the checkpoint's max_length: that is
    # our choice, not the user's problem (export reports the generation config it keeps itself).
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
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
                # processors the runtime does not reproduce (export warns about them) stay off in
                # the reference too: verification compares the graphs, not the generation configs
                repetition_penalty=1.0,
                suppress_tokens=None,
                begin_suppress_tokens=None,
            )
    finally:
        hf_logging.set_verbosity(verbosity)
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


def images_per_call(pixels: np.ndarray, most: int = 8) -> int:
    """How many evaluation images to encode at once: up to `most` at ViT sizes, one at Donut's
    2560x1920, whose activations (307,200 tokens in Swin's first stage) take gigabytes per image."""
    per_image = int(np.prod(pixels.shape[1:])) if pixels.ndim == 4 else 1
    return max(1, min(most, (8 * 3 * 384 * 384) // max(1, per_image)))


def greedy_tokens(cap: Captioner, pixels: np.ndarray, gen: mf.Generation,
                  batch: int | None = None) -> list[tuple[int, ...]]:
    """Greedy tokens without the bundle's default prompt, at most gen.max_new_tokens (see `bounded`)."""
    batch = batch or images_per_call(pixels)
    # no decoder prompt (the reference generates without one); an encoder's prompt is the bundle's default
    prompt = None if cap.generation_defaults.prompt_target == "encoder" else ()
    opts = GenerationOptions(num_beams=1, prompt_ids=prompt, max_new_tokens=gen.max_new_tokens,
                             min_new_tokens=gen.min_new_tokens)
    out = []
    for i in range(0, len(pixels), batch):
        out += [h[0].token_ids for h in cap.decode(cap.encode(pixels[i : i + batch]), opts)]
    return out


def _teacher_forced_inputs(ref: list[list[int]], gen: mf.Generation) -> tuple[np.ndarray, int]:
    steps = max(len(r) for r in ref)
    seqs = np.full((len(ref), steps + 1), gen.pad_token_id or 0, dtype=np.int64)
    seqs[:, 0] = gen.decoder_start_token_id
    for i, r in enumerate(ref):
        seqs[i, 1 : 1 + len(r)] = r
    return seqs, steps


def torch_logits(hf_model, pixels: np.ndarray, ref: list[list[int]], gen: mf.Generation) -> np.ndarray:
    """PyTorch's logits [images, steps, vocab] teacher-forced along `ref`, in the model's own dtype
    (float64 for a `.double()` copy), as float64."""
    seqs, steps = _teacher_forced_inputs(ref, gen)
    dtype = next(hf_model.parameters()).dtype
    with torch.no_grad():
        return hf_model(pixel_values=torch.from_numpy(pixels).to(dtype),
                        decoder_input_ids=torch.from_numpy(seqs[:, :steps])).logits.double().numpy()


def graph_logits(cap: Captioner, pixels: np.ndarray, ref: list[list[int]], gen: mf.Generation) -> list[np.ndarray]:
    """The graphs' logits [len(ref[i]), vocab] per image, teacher-forced along `ref`."""
    seqs, steps = _teacher_forced_inputs(ref, gen)
    out = [np.empty((len(r), cap.bundle.manifest.architecture.vocab_size), np.float32) for r in ref]
    with cap.step_decoder() as decoder:
        decoder.set_encoded(cap.encode(pixels))
        decoder.begin(np.arange(len(ref)), steps)
        for t in range(steps):
            logits = decoder.step(seqs[:, t], t)
            for i, r in enumerate(ref):
                if t < len(r):  # positions after a row's eos are padding that generate() never feeds
                    out[i][t] = logits[i]
    return out


def logit_diffs(hf_model, cap: Captioner, pixels: np.ndarray, ref: list[list[int]], gen: mf.Generation,
                expected: np.ndarray | None = None) -> np.ndarray:
    """Per image, the largest |logit| difference between the graphs and PyTorch fp32 (`expected`: its
    logits when already computed), teacher-forced along PyTorch's greedy tokens `ref`."""
    expected = torch_logits(hf_model, pixels, ref, gen) if expected is None else expected
    ours = graph_logits(cap, pixels, ref, gen)
    return np.array([float(np.abs(o - expected[i, : len(o)]).max()) for i, o in enumerate(ours)])


def max_logit_diff(hf_model, cap: Captioner, pixels: np.ndarray, ref: list[list[int]], gen: mf.Generation) -> float:
    """Largest |logit| difference to PyTorch, teacher-forced along PyTorch's greedy tokens."""
    return float(logit_diffs(hf_model, cap, pixels, ref, gen).max())


@dataclass(frozen=True)
class Fp64Check:
    """fp32 noise against a float64 copy of the model, over every verified image and step."""

    pytorch_error: float  # max |PyTorch fp32 - PyTorch float64|: the model's own fp32 noise
    edgecap_error: float  # max |edgecap fp32 graphs - PyTorch float64|
    pytorch_rms: float  # the same as root mean squares over every logit: what the gate compares
    edgecap_rms: float


def fp64_check(hf_model, caps: dict, pixels: np.ndarray, ref: list[list[int]], gen: mf.Generation) -> dict:
    """PyTorch fp32 and each captioner of `caps` (key -> Captioner) against PyTorch in float64,
    teacher-forced along `ref`, one image at a time (a float64 forward costs a few times an fp32 one,
    and its activations twice the memory); the float64 reference is computed once for all of them."""
    import copy

    double = copy.deepcopy(hf_model).double()
    err = {who: [0.0, 0.0] for who in ["pytorch", *caps]}  # max, sum of squares
    count = 0
    for i in range(len(ref)):
        one, r = pixels[i : i + 1], ref[i : i + 1]
        reference = torch_logits(double, one, r, gen)[0, : len(r[0])]
        logits = {"pytorch": torch_logits(hf_model, one, r, gen)[0, : len(r[0])]}
        logits.update({who: graph_logits(cap, one, r, gen)[0] for who, cap in caps.items()})
        for who, values in logits.items():
            diff = np.abs(values - reference)
            err[who][0] = max(err[who][0], float(diff.max()))
            err[who][1] += float(np.square(diff).sum())
        count += reference.size
    rms = {who: float(np.sqrt(e[1] / max(1, count))) for who, e in err.items()}
    return {who: Fp64Check(err["pytorch"][0], err[who][0], rms["pytorch"], rms[who]) for who in caps}


# Where the logits differ from PyTorch's by more than the absolute tolerance, the graphs still pass if,
# against PyTorch in float64, their error is at most this many times PyTorch's own fp32 error: no
# stricter with edgecap than PyTorch is with itself (issue 19: a Donut-shaped model with init std 0.2
# differs by 2.5e-2 from PyTorch fp32, whose own error against float64 is 6.7e-2). The errors compared
# are root mean squares over every verified logit: the *maximum* of two fp32 implementations' errors
# swings several times either way from image to image (measured on a 640x480 Donut-shaped model:
# edgecap 0.028 vs PyTorch 0.029 on one image, 0.154 vs 0.035 on another), while a real graph bug moves
# every logit, orders of magnitude beyond fp32 noise.
NOISE_FACTOR = 2.0


# Images beyond this many pixels are verified with sessions that return their intermediates after each
# run (Captioner memory="no-arena"): export keeps PyTorch and up to three Captioners alive at once, and
# each ONNX Runtime arena keeps its largest run, several GB at Donut's 2560x1920 (issue 20: the int8
# export of Donut-base's geometry was killed for memory in 24 GiB with the arenas).
ARENA_PIXELS = 1 << 20


def session_memory(pixels: np.ndarray) -> str:
    """The Captioner memory mode for verifying `pixels` ([n, 3, H, W])."""
    return "no-arena" if pixels.shape[-1] * pixels.shape[-2] > ARENA_PIXELS else "arena"


def verify_fp32(hf_model, bundle_dir: Path, pixels: np.ndarray, gen: mf.Generation, ref: list[list[int]],
                tolerance: float, forms: tuple = (None,)) -> dict:
    """fp32 graphs against PyTorch, per form (`forms`: Captioner's `fused` values: None for the default
    graphs, False for the plain ones) -> its Verification; `ref` = torch_greedy(hf_model, pixels, gen).
    Beyond `tolerance`, both are also measured against float64 (`fp32_problem` judges)."""
    expected = torch_logits(hf_model, pixels, ref, gen)  # once for every form
    caps, reports = {}, {}
    for form in forms:
        cap = caps[form] = Captioner(bundle_dir, precision="fp32", backend="cpu", verify_checksums=False, fused=form,
                                     memory=session_memory(pixels))
        tok, capt = agreement(greedy_tokens(cap, pixels, gen), ref)
        diffs = logit_diffs(hf_model, cap, pixels, ref, gen, expected=expected)
        reports[form] = mf.Verification("pytorch", len(pixels), float(diffs.max()), tok, capt)
    noisy = {form: caps[form] for form, rep in reports.items() if rep.max_logit_diff > tolerance or rep.token_agreement < 1}
    for form, check in (fp64_check(hf_model, noisy, pixels, ref, gen) if noisy else {}).items():
        reports[form] = dataclasses.replace(reports[form], fp64_pytorch_error=check.pytorch_error,
                                            fp64_error=check.edgecap_error, fp64_pytorch_rms=check.pytorch_rms,
                                            fp64_rms=check.edgecap_rms)
    return reports


def fp32_problem(report: mf.Verification, tolerance: float, min_token_agreement: float = 1.0) -> str | None:
    """Why the fp32 graphs are refused, or None: greedy tokens must agree, and the logits must be within
    `tolerance` of PyTorch's or, against float64, no noisier than NOISE_FACTOR x PyTorch fp32 (in RMS)."""
    noise = report.fp64_rms is not None and report.fp64_pytorch_rms is not None
    if report.token_agreement < min_token_agreement:
        problem = f"greedy tokens agree with PyTorch's on {report.token_agreement:.1%} of positions"
        if noise and report.fp64_rms <= NOISE_FACTOR * report.fp64_pytorch_rms:
            problem += (f"; PyTorch fp32 itself is {report.fp64_pytorch_error:.2e} from float64 in logits (these graphs "
                        f"{report.fp64_error:.2e}): the model is so unstable in fp32 that rounding alone flips tokens")
        return problem
    if report.max_logit_diff <= tolerance:
        return None
    if noise:
        if report.fp64_rms <= NOISE_FACTOR * report.fp64_pytorch_rms:
            return None
        return (f"max logit difference {report.max_logit_diff:.2e} > --max-logit-diff {tolerance:g}, and against "
                f"float64 their error (RMS {report.fp64_rms:.2e}) is more than {NOISE_FACTOR:g}x PyTorch fp32's own "
                f"(RMS {report.fp64_pytorch_rms:.2e})")
    return f"max logit difference {report.max_logit_diff:.2e} > --max-logit-diff {tolerance:g}"


@dataclass(frozen=True)
class TeacherForced:
    decisive_agreement: float | None  # None: no decisive step at all
    decisive_steps: int
    steps: int
    mean_kl: float


def teacher_forced(
    ref: Captioner, cap: Captioner, pixels: np.ndarray, ref_tokens: Sequence[Sequence[int]], start: int,
    margin: float = DECISIVE_MARGIN, batch: int | None = None,
) -> TeacherForced:
    """Feed both captioners the reference's own greedy tokens and compare their next-token
    distributions at every step a reference caption has (see manifest.Verification)."""
    batch = batch or images_per_call(pixels)
    agree = decisive = steps = 0
    kl_sum = 0.0
    with ref.step_decoder() as ref_decoder, cap.step_decoder() as cap_decoder:
        for i in range(0, len(pixels), batch):
            chunk, toks = pixels[i : i + batch], [list(t) for t in ref_tokens[i : i + batch]]
            n, length = len(chunk), max((len(t) for t in toks), default=0)
            if length == 0:
                continue
            for c, d in ((ref, ref_decoder), (cap, cap_decoder)):
                d.set_encoded(c.encode(chunk))
                d.begin(np.arange(n), length)
            for t in range(length):
                feed = np.array([start if t == 0 else (row[t - 1] if t - 1 < len(row) else start) for row in toks],
                                np.int64)
                lp_ref = log_softmax(ref_decoder.step(feed, t))
                lp_cap = log_softmax(cap_decoder.step(feed, t))
                for r, row in enumerate(toks):
                    if t >= len(row):
                        continue
                    p = np.exp(lp_ref[r].astype(np.float64))
                    kl_sum += float(np.sum(p * (lp_ref[r].astype(np.float64) - lp_cap[r].astype(np.float64))))
                    steps += 1
                    top2 = np.partition(lp_ref[r], -2)[-2:]
                    if top2[1] - top2[0] >= margin:
                        decisive += 1
                        agree += int(np.argmax(lp_cap[r]) == np.argmax(lp_ref[r]))
    return TeacherForced(agree / decisive if decisive else None, decisive, steps, kl_sum / max(1, steps))


class PrecisionJudge:
    """Measures reduced precisions against a bundle's fp32 graphs on the evaluation images."""

    def __init__(self, bundle_dir: Path, eval_pixels: np.ndarray, gen: mf.Generation, eval_source: str) -> None:
        self.bundle_dir, self.eval_pixels, self.gen, self.eval_source = bundle_dir, eval_pixels, gen, eval_source
        self.memory = session_memory(eval_pixels)
        self.fp32 = Captioner(bundle_dir, precision="fp32", backend="cpu", verify_checksums=False, memory=self.memory)
        self.ref = greedy_tokens(self.fp32, eval_pixels, gen)

    def judge(self, hf_model, precision: str, verify_pixels: np.ndarray, torch_ref: list[list[int]]) -> mf.Verification:
        cap = Captioner(self.bundle_dir, precision=precision, backend="cpu", verify_checksums=False, memory=self.memory)
        tok, capt = agreement(greedy_tokens(cap, self.eval_pixels, self.gen), self.ref)
        tf = teacher_forced(self.fp32, cap, self.eval_pixels, self.ref, self.gen.decoder_start_token_id)
        diff = max_logit_diff(hf_model, cap, verify_pixels, torch_ref, self.gen)
        return mf.Verification(
            "fp32", len(self.eval_pixels), diff, tok, capt, decisive_agreement=tf.decisive_agreement,
            decisive_steps=tf.decisive_steps, steps=tf.steps, mean_kl=tf.mean_kl, decisive_margin=DECISIVE_MARGIN,
            eval_images=self.eval_source,
        )


def calibration_feeds(bundle_dir: Path, pixels: np.ndarray, batch: int = 4) -> tuple[list[dict], list[dict]]:
    """(encoder feeds, decoder-step feeds) recorded while the plain fp32 graphs caption `pixels` (they
    calibrate int8-qdq, which is derived from the plain graphs)."""
    cap = Captioner(bundle_dir, precision="fp32", backend="cpu", verify_checksums=False, fused=False,
                    memory=session_memory(pixels))
    enc_feeds, dec_feeds = [], []
    opts = cap.resolve_options(GenerationOptions(num_beams=1))
    with cap.step_decoder() as decoder:
        recording = _RecordingDecoder(decoder, dec_feeds)
        for i in range(0, len(pixels), batch):
            chunk = np.ascontiguousarray(pixels[i : i + batch])
            enc_feeds.append(cap.encoder_inputs(chunk))
            decoder.set_encoded(cap.encode(chunk))
            decoding.decode(recording, len(chunk), opts)
    return enc_feeds, dec_feeds


class _RecordingDecoder:
    """A decoder state that also keeps a copy of every step's graph inputs (calibration feeds)."""

    def __init__(self, decoder, feeds: list[dict]) -> None:
        self.decoder, self.feeds = decoder, feeds

    def begin(self, rows: np.ndarray, max_steps: int) -> None:
        self.decoder.begin(rows, max_steps)

    def step(self, tokens: np.ndarray, step: int) -> np.ndarray:
        logits = self.decoder.step(tokens, step)  # binds this step's inputs (decoder._feeds), then runs
        self.feeds.append({k: np.array(v, copy=True) for k, v in self.decoder._feeds.items()})
        return logits

    def reorder(self, src_rows: np.ndarray) -> None:
        self.decoder.reorder(src_rows)
