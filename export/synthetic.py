"""Random-weight checkpoints with real models' geometry, for benchmarks (no download).

donut-base: naver-clova-ix/donut-base's shape: a Donut-Swin encoder (2560x1920 input, 4-pixel
patches, embed 128, depths 2-2-14-2, window 10) and a 4-layer, 1024-wide mBART decoder (vocab
57,525, 1,536 positions, scaled embeddings, final LayerNorm). Weights are random, so outputs are
meaningless: these exist to time the graphs and the decoder steps at the real sizes.
"""

from __future__ import annotations

import json
from pathlib import Path


def donut_base(out: Path, seed: int = 0, image_hw: tuple[int, int] = (2560, 1920), max_length: int = 20) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        DonutSwinConfig, MBartConfig, PreTrainedTokenizerFast, VisionEncoderDecoderConfig, VisionEncoderDecoderModel,
    )

    torch.manual_seed(seed)
    enc = DonutSwinConfig(image_size=list(image_hw), patch_size=4, embed_dim=128, depths=[2, 2, 14, 2],
                          num_heads=[4, 8, 16, 32], window_size=10)
    dec = MBartConfig(vocab_size=57525, d_model=1024, decoder_layers=4, decoder_attention_heads=16,
                      decoder_ffn_dim=4096, max_position_embeddings=1536, scale_embedding=True,
                      add_final_layer_norm=True, is_decoder=True, add_cross_attention=True,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    model = VisionEncoderDecoderModel(config=cfg).eval()
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.pad_token_id, c.eos_token_id = 0, 1, 2
    model.generation_config.max_length = max_length
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    vocab = {f"t{i}": i for i in range(dec.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0", pad_token="t1", eos_token="t2",
                            unk_token="t3").save_pretrained(out)
    h, w = image_hw
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "size": {"height": h, "width": w}}))
    return out
