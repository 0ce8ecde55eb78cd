"""Workstation-side pieces of `edgecap-bench`: synthetic models and the peers (PyTorch, Optimum,
OpenVINO), each timed through transformers' `generate()` on the same pixels.

Kept out of `edgecap/` because they import torch and transformers. Optimum and optimum-intel pin
transformers < 4.58: the bench runs them under `--peer-python` (bench/README.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

SYNTHETIC = ("vit-gpt2-base", "florence2-base")


def build_synthetic(name: str, out: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint with a real model's geometry (no download).

    vit-gpt2-base: ViT-base/16-224 encoder + GPT-2-124M decoder (239 M parameters), the shape of
    nlpconnect/vit-gpt2-image-captioning. florence2-base: Florence-2-base's (edgecap_export.synthetic).
    """
    if name == "florence2-base":
        from .synthetic import florence2_base

        return florence2_base(out, seed)
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic model {name!r}; available: {', '.join(SYNTHETIC)}")
    torch.manual_seed(seed)
    enc = ViTConfig()  # base/16, 224 px
    dec = GPT2Config(add_cross_attention=True, is_decoder=True)  # 124M, vocab 50257
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    model = VisionEncoderDecoderModel(config=cfg).eval()
    eos = dec.eos_token_id
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id = eos
        c.pad_token_id = eos
        c.eos_token_id = eos
    model.generation_config.max_length = 17
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    vocab = {f"t{i}": i for i in range(dec.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{eos}", pad_token=f"t{eos}").save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}})
    )
    return out


def generate_runner(model, pixels: np.ndarray, num_beams: int, new_tokens: int, device: str = "cpu",
                    half: bool = False) -> Callable[[], object]:
    """A call of `model.generate()` making exactly `new_tokens` tokens (every peer runs through it).

    Pixels go to `device` (as fp16 with `half`) once, outside the timed call; on a GPU the call waits
    for the device before it returns, so the time is the caption's, not the launch's."""
    import torch

    px = torch.from_numpy(pixels)
    if device != "cpu" or half:
        px = px.to(device=device, dtype=torch.float16 if half else torch.float32)

    def run():
        with torch.inference_mode():
            out = model.generate(
                pixel_values=px, num_beams=num_beams, do_sample=False,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            )
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    return run


class PytorchPeer:
    """transformers `generate()` on the same checkpoint and pixels; on the CPU, or on a CUDA GPU
    (device="cuda", the `pytorch-cuda` peer) in fp32 or, with fp16=True, in half precision. A model
    whose encoder reads a prompt (Florence-2) gets `encoder_prompt` = (the bundle's default prompt
    ids, image tokens): the task the edgecap rows run, as the processor's input_ids (<image>
    placeholders, then the prompt). They come from the bundle, not the processor: a peer environment
    on transformers 4.57 cannot read a tokenizer config saved by 5.x, while it reads the model."""

    name = "pytorch"

    def __init__(self, model_dir: str, threads: int | None, encoder_prompt: tuple[list[int], int] | None = None,
                 device: str = "cpu", fp16: bool = False) -> None:
        import torch
        from transformers import VisionEncoderDecoderModel

        if device != "cpu" and not torch.cuda.is_available():
            raise RuntimeError(f"this torch {torch.__version__} sees no CUDA device")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.backend = "cpu" if device == "cpu" else "cuda"
        self.device, self.fp16 = device, fp16
        t0 = time.perf_counter()
        if encoder_prompt is not None:
            from transformers import Florence2ForConditionalGeneration

            model = Florence2ForConditionalGeneration.from_pretrained(model_dir).eval()
        else:
            model = VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
        if fp16:
            model = model.half()
        model = model.to(device)
        if device != "cpu":
            # fp32 means fp32 here as in edgecap's CUDA backend (no TF32 matmuls)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if encoder_prompt is not None:
            from .family_florence2 import PromptedModel

            model = PromptedModel(model, list(encoder_prompt[0]), int(encoder_prompt[1]))
        self.model = model
        self.load_seconds = time.perf_counter() - t0

    def runner(self, pixels: np.ndarray, num_beams: int, new_tokens: int) -> Callable[[], object]:
        return generate_runner(self.model, pixels, num_beams, new_tokens, self.device, self.fp16)


class OptimumPeer:
    """Optimum's `ORTModelForVision2Seq` (encoder + decoder + decoder_with_past ONNX, run through
    transformers' `generate()`), exported once into `workdir`. With int8=True its graphs are
    quantized by ONNX Runtime's dynamic quantizer (per-tensor), as Optimum users do.
    """

    def __init__(self, model_dir: str, threads: int | None, workdir: Path, int8: bool = False) -> None:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForVision2Seq  # noqa: F401  (fail early if missing)

        self.name = "optimum"
        self.precision = "int8" if int8 else "fp32"
        fp32_dir = workdir / "optimum-fp32"
        if not (fp32_dir / "encoder_model.onnx").is_file():
            log.info("exporting %s with Optimum into %s", model_dir, fp32_dir)
            ORTModelForVision2Seq.from_pretrained(model_dir, export=True).save_pretrained(fp32_dir)
        model_path = fp32_dir
        if int8:
            model_path = workdir / "optimum-int8"
            if not (model_path / "encoder_model.onnx").is_file():
                from onnxruntime.quantization import QuantType, quantize_dynamic
                import shutil

                shutil.copytree(fp32_dir, model_path, dirs_exist_ok=True)
                from .quantize import quiet_root_logger

                for name in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):
                    if (fp32_dir / name).is_file():
                        with quiet_root_logger():
                            quantize_dynamic(str(fp32_dir / name), str(model_path / name), weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        t0 = time.perf_counter()
        self.model = ORTModelForVision2Seq.from_pretrained(
            model_path, session_options=so, provider="CPUExecutionProvider", use_merged=False
        )
        self.load_seconds = time.perf_counter() - t0

    def runner(self, pixels: np.ndarray, num_beams: int, new_tokens: int) -> Callable[[], object]:
        return generate_runner(self.model, pixels, num_beams, new_tokens)


class OpenVINOPeer:
    """optimum-intel's `OVModelForVision2Seq` (OpenVINO IR encoder + decoder + decoder_with_past on
    OpenVINO's CPU plugin, run through transformers' `generate()`), exported once into `workdir`.
    int8=True is NNCF 8-bit weight compression (`load_in_8bit`), what optimum-intel users get for
    int8; activations stay floating point. fp32 is held to f32 inference precision: on CPUs with
    bf16 units (AMX, AVX512-BF16) OpenVINO would otherwise compute in bf16 under an "fp32" label.
    """

    name = "openvino"

    def __init__(self, model_dir: str, threads: int | None, workdir: Path, int8: bool = False) -> None:
        from optimum.intel import OVModelForVision2Seq

        self.precision = "int8" if int8 else "fp32"
        model_path = workdir / f"openvino-{self.precision}"
        if not (model_path / "openvino_encoder_model.xml").is_file():
            log.info("exporting %s with optimum-intel (%s) into %s", model_dir, self.precision, model_path)
            model = OVModelForVision2Seq.from_pretrained(model_dir, export=True, compile=False, load_in_8bit=int8)
            model.save_pretrained(model_path)
        config = {"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": ""}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if not int8:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        t0 = time.perf_counter()
        self.model = OVModelForVision2Seq.from_pretrained(model_path, ov_config=config, device="CPU")
        self.load_seconds = time.perf_counter() - t0

    def runner(self, pixels: np.ndarray, num_beams: int, new_tokens: int) -> Callable[[], object]:
        return generate_runner(self.model, pixels, num_beams, new_tokens)
