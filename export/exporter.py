"""`edgecap export MODEL OUTDIR`: HF checkpoint -> verified bundle.

The bundle is written to a temporary directory beside OUTDIR, verified there with the runtime
itself, and only then moved into place: a failed verification leaves no bundle behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import edgecap
from edgecap import manifest as mf
from edgecap.bundle import sha256_file
from edgecap.errors import EdgecapError, UnsupportedModelError
from edgecap.preprocess import PreprocessSpec

from . import families, graphs, verify

log = logging.getLogger(__name__)


class ExportError(EdgecapError):
    """Export could not produce a trustworthy bundle."""


@dataclass(frozen=True)
class ExportOptions:
    verify_images: int = 4  # random inputs used to check the graphs against PyTorch
    max_logit_diff: float = 1e-3  # fp32 graphs must match PyTorch this closely
    min_token_agreement: float = 1.0  # fp32: greedy tokens must all be equal


def _library_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__}


def load_model(model: str):
    """The model, its tokenizer and its image processor config (local directory or hub id)."""
    from transformers import AutoConfig, AutoTokenizer, VisionEncoderDecoderModel

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model}: cannot read a model config ({str(exc).splitlines()[0]})") from None
    if config.model_type != "vision-encoder-decoder":
        raise UnsupportedModelError(f"{model}: model type {config.model_type!r}, expected 'vision-encoder-decoder'")
    families.check_supported(config.encoder.model_type, config.decoder.model_type)
    hf_model = VisionEncoderDecoderModel.from_pretrained(model, attn_implementation="eager").eval()
    families.repair_loaded(hf_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model}: no usable tokenizer ({str(exc).splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ExportError(f"{model}: the tokenizer has no `tokenizers` (fast) backend, which the runtime needs")
    proc_cfg = _read_processor_config(model)
    return hf_model, tokenizer, proc_cfg


def _read_processor_config(model: str) -> dict[str, Any]:
    path = Path(model) / "preprocessor_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    try:  # a hub id
        from transformers.utils import cached_file

        return json.loads(Path(cached_file(model, "preprocessor_config.json")).read_text())
    except Exception:
        raise ExportError(f"{model}: preprocessor_config.json not found (the image processor config)") from None


def generation_defaults(model, tokenizer) -> mf.Generation:
    """The model's generation config, reduced to what the runtime reproduces."""
    gen, cfg = model.generation_config, model.config

    def first(*values):
        return next((v for v in values if v is not None), None)

    start = first(gen.decoder_start_token_id, cfg.decoder_start_token_id, cfg.decoder.bos_token_id)
    if start is None:
        raise ExportError("the model has no decoder_start_token_id (set it in its generation config)")
    eos = first(gen.eos_token_id, cfg.decoder.eos_token_id, tokenizer.eos_token_id)
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = first(gen.pad_token_id, cfg.pad_token_id, cfg.decoder.pad_token_id)
    max_new = gen.max_new_tokens if gen.max_new_tokens is not None else (gen.max_length or 20) - 1
    min_new = max(gen.min_new_tokens or 0, (gen.min_length or 0) - 1, 0)
    ignored = [k for k in ("forced_bos_token_id", "forced_eos_token_id", "repetition_penalty", "suppress_tokens",
                           "begin_suppress_tokens", "bad_words_ids") if getattr(gen, k, None) not in (None, 1.0, [])]
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
    )


def _save_graph(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def export(model: str, outdir: str | os.PathLike, options: ExportOptions | None = None) -> Path:
    """Export, verify and write a bundle; returns its path. Raises ExportError/UnsupportedModelError."""
    options = options or ExportOptions()
    out = Path(outdir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not empty; choose a new directory or remove it")
    hf_model, tokenizer, proc_cfg = load_model(model)
    cfg = hf_model.config
    try:
        spec = PreprocessSpec.from_hf_config(proc_cfg)
    except ValueError as exc:
        raise ExportError(f"{model}: preprocessor_config.json: {exc}") from None
    enc, dec = families.extract(hf_model)
    if spec.output_hw != tuple(enc.image_hw):
        raise ExportError(f"{model}: the image processor makes {spec.output_hw} images but the encoder expects {enc.image_hw}")
    gen = generation_defaults(hf_model, tokenizer)
    if gen.max_new_tokens + 1 > dec.max_positions:
        gen = mf.Generation(**{**gen.__dict__, "max_new_tokens": dec.max_positions - 1})

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        log.info("building graphs for %s + %s", cfg.encoder.model_type, cfg.decoder.model_type)
        enc_graph, enc_in, enc_out = graphs.build_encoder(enc, dec)
        dec_graph, dec_in, dec_out = graphs.build_decoder_step(dec, enc.seq_len)
        _save_graph(enc_graph, tmp / "fp32" / "encoder.onnx")
        _save_graph(dec_graph, tmp / "fp32" / "decoder.onnx")
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        pair = mf.GraphPair(
            encoder=mf.GraphSpec("fp32/encoder.onnx", enc_in, enc_out),
            decoder=mf.GraphSpec("fp32/decoder.onnx", dec_in, dec_out),
        )
        manifest = mf.Manifest(
            format=mf.FORMAT,
            format_version=mf.FORMAT_VERSION,
            source=mf.Source(
                model=str(model),
                revision=getattr(cfg, "_commit_hash", None),
                encoder_type=cfg.encoder.model_type,
                decoder_type=cfg.decoder.model_type,
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
            ),
            preprocess=spec.to_dict(),
            generation=gen,
            tokenizer=mf.TokenizerSpec(
                file="tokenizer.json",
                skip_special_tokens=True,
                clean_up_tokenization_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
            ),
            graphs={"fp32": pair},
            files={},
        )
        _write_manifest(tmp, manifest)
        report = verify.verify_precision(hf_model, tmp, "fp32", spec, options.verify_images, gen)
        log.info("fp32 verification: %s", report)
        if report.max_logit_diff > options.max_logit_diff or report.token_agreement < options.min_token_agreement:
            raise ExportError(
                f"verification failed: fp32 graphs differ from PyTorch (max logit difference "
                f"{report.max_logit_diff:.2e}, token agreement {report.token_agreement:.1%}); no bundle written"
            )
        manifest = mf.Manifest(**{**manifest.__dict__, "verification": {"fp32": report}})
        _write_manifest(tmp, manifest)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s", out)
    return out


def _write_manifest(root: Path, manifest: mf.Manifest) -> None:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != mf.MANIFEST_FILE:
            files[p.relative_to(root).as_posix()] = sha256_file(p)
    manifest = mf.Manifest(**{**manifest.__dict__, "files": files})
    (root / mf.MANIFEST_FILE).write_text(manifest.to_json())
