"""Workstation-side pieces of `edgecap-bench`: synthetic models and the PyTorch peer.

Kept out of `edgecap/` because they import torch and transformers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

SYNTHETIC = ("vit-gpt2-base",)


def build_synthetic(name: str, out: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint with a real model's geometry (no download).

    vit-gpt2-base: ViT-base/16-224 encoder + GPT-2-124M decoder (239 M parameters), the shape of
    nlpconnect/vit-gpt2-image-captioning.
    """
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


class PytorchPeer:
    """transformers `generate()` on the same checkpoint and pixels."""

    name = "pytorch"

    def __init__(self, model_dir: str, threads: int | None) -> None:
        import torch
        from transformers import VisionEncoderDecoderModel

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        t0 = time.perf_counter()
        self.model = VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
        self.load_seconds = time.perf_counter() - t0

    def runner(self, pixels: np.ndarray, num_beams: int, new_tokens: int) -> Callable[[], object]:
        torch = self.torch
        px = torch.from_numpy(pixels)

        def run():
            with torch.inference_mode():
                return self.model.generate(
                    pixel_values=px, num_beams=num_beams, do_sample=False,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                )

        return run
