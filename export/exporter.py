"""`edgecap export MODEL OUTDIR`: HF checkpoint -> verified bundle.

The bundle is written to a temporary directory beside OUTDIR, verified there with the runtime
itself, and only then moved into place: a failed verification leaves no bundle behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import edgecap
from edgecap import manifest as mf
from edgecap.bundle import sha256_file
from edgecap.errors import EdgecapError, UnsupportedModelError
from edgecap.preprocess import PreprocessSpec, preprocess

from . import bundlegraphs, families, family_florence2, quantize, slowtokenizer, verify
from .evalimages import synthetic_images
from .graphbuilder import INT8_SENSITIVE_PARTS

log = logging.getLogger(__name__)


class ExportError(EdgecapError):
    """Export could not produce a trustworthy bundle."""


class PartialExportError(ExportError):
    """The bundle was written, but without precisions that were asked for and failed the quality gate
    (raised unless `ExportOptions.allow_partial`)."""

    def __init__(self, message: str, bundle: Path, refused: dict[str, str]) -> None:
        super().__init__(message)
        self.bundle, self.refused = bundle, refused


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "int8")
    verify_images: int = 4  # random inputs used to check the fp32 graphs against PyTorch
    # fp32 graphs must match PyTorch this closely, or be no noisier than PyTorch fp32 itself against
    # float64 (verify.fp32_problem)
    max_logit_diff: float = 1e-3
    # tokens decoded per image when verifying and judging precisions (0: the model's max_new_tokens)
    verify_steps: int = verify.VERIFY_STEPS
    min_token_agreement: float = 1.0  # fp32: greedy tokens must all be equal
    # reduced precisions: teacher-forced top-1 agreement with fp32 on decisive steps
    # (manifest.Verification), else the precision is not written
    min_agreement: float = 0.97
    allow_partial: bool = False  # False: a refused precision raises PartialExportError (bundle still written)
    eval_images: tuple[str, ...] = ()  # images for the precision gate; default: synthetic (evalimages.py)
    calibration_images: tuple[str, ...] = ()  # int8-qdq activation ranges; default: 16 evaluation images
    int4_block_size: int = 32
    force: bool = False  # replace an existing bundle at outdir (only once the new one is verified)
    # also write <precision>/decoder_attn.onnx, the decoder step emitting cross-attention (attention
    # maps); the normal decoder.onnx is unchanged by it
    with_attentions: bool = False
    # the bundle's default decoder prompt (e.g. Donut's "<s_cord-v2>"), tokenized without special tokens
    prompt: str | None = None
    # also write each CPU precision's graphs with ONNX Runtime's fused operators (what the CPU runs by
    # default; export/bundlegraphs.py); False: the plain graphs only
    fused: bool = True
    # an int8 that fails the quality gate is built and judged again with the self-attention's q/k/v in
    # fp32 (graphbuilder.INT8_SENSITIVE_PARTS), and written that way if it then passes
    int8_fallback: bool = True
    int8_fp32_parts: tuple[str, ...] = ()  # int8 decoder projections always kept in fp32 (INT8_SENSITIVE_PARTS' names)


def _library_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__}


# huggingface_hub's repo id form: "name" or "namespace/name" (what a missing local path is not)
_HUB_ID = re.compile(r"^(?![-.])[\w.-]{1,96}(?<![-.])(/(?![-.])[\w.-]{1,96}(?<![-.]))?$")


def _check_model_source(model: str) -> None:
    """Fail with the user's own terms (a missing directory) before transformers says "repo id"."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(f"{model}: no config.json in this directory (not a saved Hugging Face checkpoint: "
                              "save one with model.save_pretrained(DIR))")
    elif path.exists():
        raise ExportError(f"{model}: not a directory (MODEL is a checkpoint directory or a hub id)")
    elif not _HUB_ID.match(model) or "--" in model or ".." in model:
        raise ExportError(f"{model}: directory not found")


def _tokenizer_help(model: str, why: str) -> str:
    return (f"{model}: export needs a fast tokenizer saved as tokenizer.json (the `tokenizers` file the runtime "
            f"reads), {why}; write one into the checkpoint with: python -c \"from transformers import AutoTokenizer; "
            f"AutoTokenizer.from_pretrained('SOURCE', use_fast=True).save_pretrained('{model}')\" where SOURCE is "
            "the checkpoint's original tokenizer (its hub id or directory)")


def load_model(model: str):
    """The model, its tokenizer, its image preprocessing and, for models that read their prompt in the
    encoder (Florence-2), the processor that builds that prompt, else None (local directory or hub id).

    The image processor config is read and checked before any weights are loaded: a checkpoint
    without one fails in a second, not after the weights (Florence-2's comes with its processor)."""
    from transformers import AutoConfig, AutoTokenizer, VisionEncoderDecoderModel

    _check_model_source(model)
    family_florence2.check_layout(model)
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        missing = not Path(model).exists()
        where = "directory not found, and the Hugging Face Hub did not provide it" if missing else "cannot read a model config"
        raise ExportError(f"{model}: {where} ({str(exc).splitlines()[0]})") from None
    if family_florence2.is_florence2(config):
        hf_model, tokenizer, proc_cfg, processor = family_florence2.load(model)
        try:
            spec = PreprocessSpec.from_hf_config(proc_cfg, transformers_major=_transformers_major())
        except ValueError as exc:
            raise ExportError(f"{model}: its processor's image processor: {exc}") from None
        return hf_model, tokenizer, spec, processor
    if config.model_type != "vision-encoder-decoder":
        raise UnsupportedModelError(f"{model}: model type {config.model_type!r}, expected 'vision-encoder-decoder' "
                                    "or 'florence2'")
    families.check_supported(config.encoder.model_type, config.decoder.model_type)
    spec = preprocess_spec(model)
    hf_model = VisionEncoderDecoderModel.from_pretrained(model, attn_implementation="eager").eval()
    families.repair_loaded(hf_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, or ImportError (a slow class's MeCab)
        tokenizer = _plain_fast_tokenizer(Path(model))
        if tokenizer is None:
            tokenizer = _from_vocab_txt(model, None, f"and none could be loaded ({str(exc).splitlines()[0]})")
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        tokenizer = _from_vocab_txt(model, tokenizer, f"but it has only a slow {type(tokenizer).__name__}")
    return hf_model, tokenizer, spec, None


def _from_vocab_txt(model: str, slow, why: str):
    """A fast tokenizer built from the checkpoint's vocab.txt (manga-ocr's BertJapaneseTokenizer has no
    fast class), checked to decode as `slow` does; ExportError when there is no vocab.txt or it differs."""
    try:
        fast = slowtokenizer.fast_from_slow(Path(model), slow)
    except ValueError as exc:
        raise ExportError(f"{model}: {exc}") from None
    if fast is None:
        raise ExportError(_tokenizer_help(model, why))
    return fast


def _plain_fast_tokenizer(model_dir: Path):
    """tokenizer.json + tokenizer_config.json without AutoTokenizer's class lookup.

    A checkpoint saved by transformers 5.x names `TokenizersBackend` as its class, which 4.x
    cannot import; the tokenizer itself is the same `tokenizers` file.
    """
    from transformers import PreTrainedTokenizerFast

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    keys = ("bos_token", "eos_token", "pad_token", "unk_token", "clean_up_tokenization_spaces")
    kwargs = {k: cfg[k] for k in keys if isinstance(cfg.get(k), (str, bool))}
    log.info("loading %s directly (AutoTokenizer could not resolve its tokenizer class)", path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), **kwargs)


# Where transformers keeps an image processor's config: its own file (every 4.x save, and 5.x's
# ImageProcessor.save_pretrained), or nested in the processor's file (5.x's *Processor.save_pretrained,
# e.g. DonutProcessor, NougatProcessor); old checkpoints name feature extractors there.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_NESTED_KEYS = ("image_processor", "feature_extractor")


def _read_json(model: str, name: str) -> dict | None:
    """A checkpoint file as JSON (local directory, else the hub's cache), None if it has none."""
    path = Path(model) / name
    if not path.is_file() and not Path(model).is_dir():
        try:  # a hub id
            from transformers.utils import cached_file

            path = Path(cached_file(model, name))
        except Exception:  # noqa: BLE001 - absent from the hub, or no network: looked for, not found
            return None
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read it as JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def read_processor_config(model: str) -> tuple[dict[str, Any], str]:
    """The image processor config and the file it came from, in whichever layout transformers wrote."""
    for name in PROCESSOR_FILES:
        data = _read_json(model, name)
        if data is None:
            continue
        if data.get("image_processor_type") or data.get("feature_extractor_type"):
            return data, name
        for key in _NESTED_KEYS:
            nested = data.get(key)
            if isinstance(nested, dict):
                if not (nested.get("image_processor_type") or nested.get("feature_extractor_type")):
                    # name it after the processor, as transformers' Auto classes would resolve it
                    processor = str(data.get("processor_class") or "")
                    if processor.endswith("Processor"):
                        nested = {**nested, "image_processor_type": processor[: -len("Processor")] + "ImageProcessor"}
                return nested, f"{name} ({key})"
    raise ExportError(f"{model}: no image processor config found (looked in {' and '.join(PROCESSOR_FILES)}); "
                      "save the checkpoint's processor into it with processor.save_pretrained(DIR)")


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def preprocess_spec(model: str) -> PreprocessSpec:
    """The checkpoint's image preprocessing as the installed transformers line runs it."""
    cfg, where = read_processor_config(model)
    try:
        return PreprocessSpec.from_hf_config(cfg, transformers_major=_transformers_major())
    except ValueError as exc:
        raise ExportError(f"{model}: {where}: {exc}") from None


def generation_defaults(model, tokenizer) -> mf.Generation:
    """The model's generation config, reduced to what the runtime reproduces."""
    gen, cfg = model.generation_config, model.config
    dec_cfg = cfg.decoder if hasattr(cfg, "decoder") else cfg.text_config  # Florence-2: its BART

    def first(*values):
        return next((v for v in values if v is not None), None)

    start = first(gen.decoder_start_token_id, getattr(cfg, "decoder_start_token_id", None), dec_cfg.bos_token_id)
    if start is None:
        raise ExportError("the model has no decoder_start_token_id (set it in its generation config)")
    eos = first(gen.eos_token_id, dec_cfg.eos_token_id, tokenizer.eos_token_id)
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = first(gen.pad_token_id, getattr(cfg, "pad_token_id", None), dec_cfg.pad_token_id)
    max_new = gen.max_new_tokens if gen.max_new_tokens is not None else (gen.max_length or 20) - 1
    min_new = max(gen.min_new_tokens or 0, (gen.min_length or 0) - 1, 0)
    ignored = [k for k in ("repetition_penalty", "suppress_tokens",
                           "begin_suppress_tokens") if getattr(gen, k, None) not in (None, 1.0, [])]
    if ignored:
        log.warning("generation config sets %s, which edgecap does not reproduce", ", ".join(ignored))
    return mf.Generation(
        decoder_start_token_id=int(start),
        bos_token_id=None if gen.bos_token_id is None else int(gen.bos_token_id),
        eos_token_ids=eos_ids,
        pad_token_id=None if pad is None else int(pad),
        max_new_tokens=int(max_new),
        min_new_tokens=int(min_new),
        num_beams=int(gen.num_beams or 1),
        length_penalty=float(gen.length_penalty if gen.length_penalty is not None else 1.0),
        early_stopping=gen.early_stopping if gen.early_stopping in (True, False, "never") else False,
        no_repeat_ngram_size=int(gen.no_repeat_ngram_size or 0),
        num_return_sequences=int(gen.num_return_sequences or 1),
        forced_bos_token_id=None if gen.forced_bos_token_id is None else int(gen.forced_bos_token_id),
        forced_eos_token_ids=_id_list(gen.forced_eos_token_id),
        bad_words_ids=[[int(t) for t in seq] for seq in (getattr(gen, "bad_words_ids", None) or [])],
        # transformers' generate() keeps a Donut prompt as the whole decoder input (no start token
        # before it): the same rule, recorded so the runtime needs no family knowledge
        prompt_includes_start="donut" in families.model_types(cfg)[0],
    )


def nougat_generation(gen: mf.Generation, tokenizer) -> mf.Generation:
    """What Nougat's own inference (the nougat repository's NougatModel.inference and predict.py) adds
    to the generation config: the repetition stop, the unknown token banned (`bad_words_ids=[[unk]]`,
    also the model card's generate() call), and the markdown clean-up of its output (predict.py's
    default; the model card calls post_process_generation too)."""
    bad = list(gen.bad_words_ids)
    unk = tokenizer.unk_token_id
    if unk is not None and [int(unk)] not in bad and int(unk) not in gen.eos_token_ids:
        bad.append([int(unk)])
    return mf.Generation(**{**gen.__dict__, "stopping": gen.stopping or "nougat", "bad_words_ids": bad,
                            "postprocess": gen.postprocess or "nougat"})


def _prompt_ids(model: str, tokenizer, prompt: str) -> list[int]:
    """--prompt as ids, refused (as `edgecap caption` refuses it) when a piece is unknown to the tokenizer."""
    from edgecap.text import unknown_prompt_message

    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids, unk = [int(t) for t in enc["input_ids"]], tokenizer.unk_token_id
    if unk is not None and unk in ids:
        pieces = [prompt[a:b] for t, (a, b) in zip(ids, enc["offset_mapping"]) if t == unk]
        raise ExportError(f"{model}: --prompt: {unknown_prompt_message(prompt, pieces, str(tokenizer.unk_token))}")
    return ids


def _id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _check_options(options: ExportOptions) -> None:
    unknown = [p for p in options.precisions if p not in quantize.PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision(s) {', '.join(unknown)}; available: {', '.join(quantize.PRECISIONS)}")
    if not (options.max_logit_diff > 0 and math.isfinite(options.max_logit_diff)):
        raise ExportError(f"--max-logit-diff must be a positive number, got {options.max_logit_diff}")
    if options.verify_steps < 0:
        raise ExportError(f"--verify-steps must be >= 0 (0: every token), got {options.verify_steps}")
    if options.verify_images < 1:
        raise ExportError(f"--verify-images must be >= 1, got {options.verify_images}")


def _build_precision(prec: str, root: Path, enc, dec, options: ExportOptions, done: set[str],
                     calib_pixels: np.ndarray | None = None, fp32_parts: tuple[str, ...] = ()) -> mf.GraphPair:
    return bundlegraphs.build_precision(prec, root, enc, dec, options.with_attentions, options.fused,
                                        options.int4_block_size, done, calib_pixels, fp32_parts)


def _build_and_judge(prec, tmp, enc, dec, options, pairs, manifest, judge, ref_model, verify_pixels, torch_ref,
                     calib_pixels, vgen, fp32_parts=()) -> mf.Verification:
    """Write a reduced precision's graphs into the bundle being built and measure them against fp32."""
    log.info("building %s graphs%s", prec, f" ({', '.join(fp32_parts)} in fp32)" if fp32_parts else "")
    pairs[prec] = _build_precision(prec, tmp, enc, dec, options, set(pairs) - {prec}, calib_pixels, fp32_parts)
    _write_manifest(tmp, mf.Manifest(**{**manifest.__dict__, "graphs": pairs}))
    rep = dataclasses.replace(judge.judge(ref_model, prec, verify_pixels, torch_ref),
                              verified_steps=vgen.max_new_tokens, fp32_parts=list(fp32_parts))
    log.info("%s vs fp32: top-1 agreement %s on %d decisive of %d steps, mean KL %.2e nats; captions equal %.1f%%; "
             "max logit difference to PyTorch %.2e", prec,
             "-" if rep.decisive_agreement is None else f"{rep.decisive_agreement:.1%}", rep.decisive_steps, rep.steps,
             rep.mean_kl, 100 * rep.caption_agreement, rep.max_logit_diff)
    return rep


def export(model: str, outdir: str | os.PathLike, options: ExportOptions | None = None) -> Path:
    """Export, verify and write a bundle; returns its path. Raises ExportError/UnsupportedModelError."""
    options = options or ExportOptions()
    _check_options(options)
    out = Path(outdir)
    _check_outdir(out, options.force)
    hf_model, tokenizer, spec, processor = load_model(model)
    cfg = hf_model.config
    enc, dec = families.extract(hf_model, spec.output_hw)
    if spec.output_hw != tuple(enc.image_hw):
        raise ExportError(f"{model}: the image processor makes {spec.output_hw} images but the encoder expects {enc.image_hw}")
    gen = generation_defaults(hf_model, tokenizer)
    encodes_text = not getattr(tokenizer, "edgecap_decode_only", False)
    if options.prompt and not encodes_text:
        raise ExportError(f"{model}: --prompt needs the model's own text encoding, and this checkpoint's tokenizer "
                          "was rebuilt from vocab.txt for decoding only; set prompt ids in its generation config")
    florence, ref_model = None, hf_model
    if processor is not None:  # Florence-2: the prompt is read by the encoder (family_florence2.py)
        try:
            florence, gen = family_florence2.prompts(processor, enc, gen, options.prompt)
        except (ValueError, UnsupportedModelError) as exc:
            raise ExportError(f"{model}: {exc}") from None
        ref_model = family_florence2.PromptedModel(hf_model, gen.prompt_ids, enc.seq_len)
    elif options.prompt:
        gen = mf.Generation(**{**gen.__dict__, "prompt_ids": _prompt_ids(model, tokenizer, options.prompt)})
    prompt_len = len(gen.prompt_ids) + (0 if gen.prompt_includes_start and gen.prompt_ids else 1)
    if gen.prompt_target == "encoder":
        prompt_len = 1  # the decoder starts from its start token alone
    if gen.max_new_tokens + prompt_len - 1 > dec.max_positions:
        gen = mf.Generation(**{**gen.__dict__, "max_new_tokens": dec.max_positions - prompt_len + 1})
    verify_pixels = verify.random_images(spec, options.verify_images)
    if options.calibration_images:
        calib_pixels = preprocess(list(options.calibration_images), spec)
    else:
        calib_pixels = None  # the evaluation images, below
    reduced = [p for p in options.precisions if p != "fp32"]
    if options.eval_images:
        eval_pixels, eval_source = preprocess(list(options.eval_images), spec), "user"
    else:
        eval_pixels, eval_source = preprocess(synthetic_images(32, seed=1), spec), "synthetic"
        if reduced:
            log.info("judging %s on 32 synthetic images (shapes, text); for a figure you can trust, "
                     "pass --eval-images DIR with a few dozen of your own images", ", ".join(reduced))
    if calib_pixels is None:
        calib_pixels = eval_pixels[:16]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_dir(out)
    try:
        enc_type, dec_type = families.model_types(cfg)
        log.info("building fp32 graphs for %s + %s", enc_type, dec_type)
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        pairs = {"fp32": _build_precision("fp32", tmp, enc, dec, options, set())}
        manifest = mf.Manifest(
            format=mf.FORMAT,
            format_version=mf.FORMAT_VERSION,
            source=mf.Source(
                model=str(model),
                revision=getattr(cfg, "_commit_hash", None),
                encoder_type=enc_type,
                decoder_type=dec_type,
                exporter=f"edgecap {edgecap.__version__}",
                libraries=_library_versions(),
            ),
            architecture=mf.Architecture(
                encoder_layers=len(enc.layers),
                encoder_hidden_size=enc.hidden,
                encoder_heads=enc.num_heads,
                encoder_seq_len=enc.seq_len,
                decoder_layers=len(dec.layers),
                decoder_hidden_size=dec.hidden,
                decoder_heads=dec.num_heads,
                head_dim=dec.head_dim,
                vocab_size=dec.vocab,
                max_positions=dec.max_positions,
                encoder_flops=enc.flops(dec),
                decoder_step_params=dec.step_params(),
                encoder_grid=list(enc.grid),
                encoder_prefix_tokens=enc.prefix_count,
                encoder_patch_size=int(enc.patch),
                encoder_prompt=florence is not None,
            ),
            preprocess=spec.to_dict(),
            generation=gen,
            tokenizer=mf.TokenizerSpec(
                file="tokenizer.json",
                skip_special_tokens=True,
                clean_up_tokenization_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
                encodes_text=encodes_text,
            ),
            graphs=pairs,
            files={},
            florence2=florence,
        )
        _write_manifest(tmp, manifest)
        vgen = verify.bounded(gen, options.verify_steps)  # at most verify_steps tokens per image
        torch_ref = verify.torch_greedy(ref_model, verify_pixels, vgen)
        # both forms of the fp32 graphs are held to PyTorch: the fused ones (what the CPU runs) and the
        # plain ones (TensorRT's source, the reference); the manifest records the form the CPU runs
        forms = (True, False) if pairs["fp32"].fused is not None else (False,)
        reports_fp32 = {fused: dataclasses.replace(rep, verified_steps=vgen.max_new_tokens) for fused, rep in
                        verify.verify_fp32(ref_model, tmp, verify_pixels, vgen, torch_ref, options.max_logit_diff,
                                           forms).items()}
        report = reports_fp32[forms[0]]
        if len(forms) > 1:
            report = dataclasses.replace(report, plain=reports_fp32[False])
        log.info("fp32 vs PyTorch (%d images, up to %d tokens each): max logit difference %.2e, token agreement "
                 "%.1f%%%s", len(verify_pixels), vgen.max_new_tokens, report.max_logit_diff,
                 100 * report.token_agreement,
                 "" if report.fp64_rms is None else f"; against float64 (RMS): edgecap {report.fp64_rms:.2e}, "
                 f"PyTorch fp32 {report.fp64_pytorch_rms:.2e}")
        for fused, rep in reports_fp32.items():
            problem = verify.fp32_problem(rep, options.max_logit_diff, options.min_token_agreement)
            if problem:
                raise ExportError(f"verification failed: the {'fused' if fused else 'plain'} fp32 graphs differ from "
                                  f"PyTorch ({problem}); no bundle written. If this model's logits are large, a looser "
                                  "--max-logit-diff may be right")
        reports = {"fp32": report}
        refused: dict[str, str] = {}
        judge = verify.PrecisionJudge(tmp, eval_pixels, vgen, eval_source) if reduced else None
        for prec in reduced:
            rep = _build_and_judge(prec, tmp, enc, dec, options, pairs, manifest, judge, ref_model, verify_pixels,
                                   torch_ref, calib_pixels, vgen, options.int8_fp32_parts if prec == "int8" else ())
            problem = _gate(rep, options.min_agreement)
            if (problem and prec == "int8" and options.int8_fallback and not options.int8_fp32_parts
                    and rep.decisive_agreement is not None):  # nothing decisive: nothing a rebuild could change
                # keep the products int8 hurts most in fp32 (graphbuilder.INT8_SENSITIVE_PARTS) and judge again
                log.info("int8 refused (%s); trying int8 with the self-attention's q/k/v in fp32", problem)
                shutil.rmtree(tmp / prec, ignore_errors=True)
                kept = _build_and_judge(prec, tmp, enc, dec, options, pairs, manifest, judge, ref_model, verify_pixels,
                                        torch_ref, calib_pixels, vgen, INT8_SENSITIVE_PARTS)
                if _gate(kept, options.min_agreement) is None:
                    rep, problem = kept, None
                else:
                    problem += f"; with the self-attention's q/k/v in fp32: {_gate(kept, options.min_agreement)}"
            if problem:
                log.warning("%s not written: %s", prec, problem)
                refused[prec] = problem
                del pairs[prec]
                shutil.rmtree(tmp / prec, ignore_errors=True)
                continue
            reports[prec] = rep
        # Verified with the checkpoint's own generation config (what generate() uses); what Nougat's
        # inference adds to it goes into the bundle's defaults only now.
        final_gen = nougat_generation(gen, tokenizer) if spec.kind == "nougat" else gen
        if getattr(tokenizer, "edgecap_postprocess", None) and final_gen.postprocess is None:
            final_gen = mf.Generation(**{**final_gen.__dict__, "postprocess": tokenizer.edgecap_postprocess})
        manifest = mf.Manifest(**{**manifest.__dict__, "generation": final_gen, "graphs": pairs,
                                  "verification": reports})
        _write_manifest(tmp, manifest)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s)", out, ", ".join(pairs))
    if refused and not options.allow_partial:
        raise PartialExportError(
            f"{out}: written without {', '.join(refused)} (failed the quality gate, see above); "
            "pass --allow-partial to accept that, or --eval-images DIR with your own images", out, refused)
    return out


def _check_outdir(out: Path, force: bool) -> None:
    """OUTDIR must be new or empty; with `force`, an existing bundle (never any other directory)."""
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not force:
        raise ExportError(f"{out}: exists and is not empty; choose a new directory, or pass --force to replace "
                          "the bundle there once the new one is verified")
    if not (out / mf.MANIFEST_FILE).is_file():
        # --force deletes: a typo must not cost a directory that was never a bundle
        raise ExportError(f"{out}: not an edgecap bundle (no {mf.MANIFEST_FILE}); --force only replaces bundles, "
                          "remove the directory yourself if you mean it")


def _partial_dir(out: Path) -> Path:
    """A new hidden sibling of `out` to build in, created as mkdir would (mode 0777 less the umask).

    Not tempfile.mkdtemp: its 0700 would become the bundle's own mode, unreadable to the service
    or container that runs it under another uid.
    """
    out = Path(os.path.abspath(out))  # "." has no name to derive one from
    while True:
        tmp = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished bundle to `out`. An old bundle there (--force) is renamed aside first and
    deleted only after the new one is in place, so no failure leaves neither."""
    out, old = Path(os.path.abspath(out)), None
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.replaced-{secrets.token_hex(4)}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


def _gate(rep: mf.Verification, min_agreement: float) -> str | None:
    """Why a reduced precision is refused, or None (always None with min_agreement <= 0: no gate)."""
    if min_agreement <= 0:
        return None
    if rep.decisive_agreement is None:
        return (f"fp32 was never decisive on the {rep.images} evaluation images, so nothing measures the "
                "quantization; pass --eval-images DIR with images of what the model reads")
    if rep.decisive_agreement < min_agreement:
        return (f"its top token agrees with fp32's on {rep.decisive_agreement:.1%} of {rep.decisive_steps} decisive "
                f"steps, below the {min_agreement:.1%} threshold (--min-agreement)")
    return None


def _write_manifest(root: Path, manifest: mf.Manifest) -> None:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != mf.MANIFEST_FILE:
            files[p.relative_to(root).as_posix()] = sha256_file(p)
    manifest = mf.Manifest(**{**manifest.__dict__, "files": files})
    (root / mf.MANIFEST_FILE).write_text(manifest.to_json())
