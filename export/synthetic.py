"""Random-weight checkpoints with real models' geometry, for benchmarks (no download).

donut-base: naver-clova-ix/donut-base's shape: a Donut-Swin encoder (2560x1920 input, 4-pixel
patches, embed 128, depths 2-2-14-2, window 10) and a 4-layer, 1024-wide mBART decoder (vocab
57,525, 1,536 positions, scaled embeddings, final LayerNorm). Weights are random, so outputs are
meaningless: these exist to time the graphs and the decoder steps at the real sizes.

florence2-base: florence-community/Florence-2-base's shape (`florence2_base`): DaViT (embed
128-256-512-1024, depths 1-1-9-1, windows of 12) at 768 x 768, 577 image tokens projected to 768, a
BART with 6 encoder and 6 decoder layers at 768 (12 heads, FFN 3072, 1,024 positions, vocabulary
51,328 with the <image> token), Florence-2's generation config. `florence2_checkpoint` builds any
geometry (the tests' tiny one too), saved with a Florence2Processor made as transformers' conversion
script makes the real one: a byte-level BPE tokenizer (bytes only, a few merges) with Florence's added
special tokens and <image>, a CLIP image processor, the post-processor config.
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


# The real tokenizer's added special tokens, in its order (transformers' convert_florence2 script).
FLORENCE2_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                    + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
                       "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                       "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"])
# florence-community's post_processor_config (its list of banned grounding phrases shortened)
FLORENCE2_POST_PROCESSOR = {
    "ocr": {"pattern": r"(.+?)" + r"<loc_(\d+)>" * 8, "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": ["it", "the image", "image", "the", "a", "an", "a group"]},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def florence2_tokenizer():
    """A byte-level BPE tokenizer with BART's special tokens, Florence's added ones and <image>, built
    with this transformers line's classes (4.57's BartTokenizerFast and 5.x's take the image token
    differently)."""
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import BartTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("\u0120", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + FLORENCE2_TOKENS + ["<image>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                 sep_token="</s>", cls_token="<s>")
    if transformers.__version__.startswith("4."):
        return BartTokenizerFast(tokenizer_object=tok, additional_special_tokens=FLORENCE2_TOKENS,
                                 extra_special_tokens={"image_token": "<image>"}, **names)
    return BartTokenizerFast(tokenizer_object=tok, extra_special_tokens=FLORENCE2_TOKENS, image_token="<image>", **names)


def florence2_processor(image_hw: tuple[int, int], image_tokens: int):
    """Florence2Processor: CLIP image processor (ImageNet mean/std, bicubic resize to image_hw, no
    crop, image_seq_length), the tokenizer above, the post-processor config."""
    from transformers import CLIPImageProcessor, Florence2Processor

    h, w = image_hw
    images = CLIPImageProcessor(size={"height": h, "width": w}, do_center_crop=False, crop_size={"height": h, "width": w},
                                resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                image_seq_length=image_tokens)
    return Florence2Processor(image_processor=images, tokenizer=florence2_tokenizer(),
                              post_processor_config=FLORENCE2_POST_PROCESSOR)


def davit_tokens(vision: dict, image_hw: tuple[int, int]) -> int:
    """Image tokens DaViT + the projector make at `image_hw`: 1 pooled + the last stage's grid."""
    h, w = image_hw
    for k, s, p in zip(vision["patch_size"], vision["patch_stride"], vision["patch_padding"]):
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return 1 + h * w


def florence2_checkpoint(out: Path, vision: dict, text: dict, image_hw: tuple[int, int], seed: int = 0,
                         tie: bool = True, vocab_multiple: int = 1, **generation) -> Path:
    """A random Florence2ForConditionalGeneration with this geometry, its generation config (Florence-2's,
    updated by `generation`) and processor, saved to `out`. The vocabulary is the tokenizer's, rounded up
    to `vocab_multiple` unless `text` sets vocab_size (the conversion pads it to 64)."""
    import torch
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    proc = florence2_processor(image_hw, davit_tokens(vision, image_hw))
    vocab = -(-len(proc.tokenizer) // vocab_multiple) * vocab_multiple
    text = dict(dict(model_type="bart", vocab_size=vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, tie_word_embeddings=tie),
                **text)
    torch.manual_seed(seed)
    cfg = Florence2Config(vision_config=vision, text_config=text, image_token_id=proc.tokenizer.image_token_id,
                          tie_word_embeddings=tie)
    model = Florence2ForConditionalGeneration(cfg).eval()
    settings = dict(num_beams=3, no_repeat_ngram_size=3, early_stopping=True, forced_bos_token_id=0,
                    forced_eos_token_id=2, decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                    max_new_tokens=20, max_length=None)
    for key, value in {**settings, **generation}.items():
        setattr(model.generation_config, key, value)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


# Florence-2-base (florence-community/Florence-2-base's config.json)
FLORENCE2_BASE_VISION = dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                             num_groups=[4, 8, 16, 32], patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2],
                             patch_padding=[3, 1, 1, 1], patch_prenorm=[False, True, True, True], window_size=12,
                             projection_dim=768, max_position_embeddings=50, max_temporal_embeddings=100,
                             drop_path_rate=0.0)
FLORENCE2_BASE_TEXT = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                           decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                           max_position_embeddings=1024, vocab_size=51328, scale_embedding=False)


def florence2_base(out: Path, seed: int = 0) -> Path:
    return florence2_checkpoint(out, FLORENCE2_BASE_VISION, FLORENCE2_BASE_TEXT, (768, 768), seed=seed)
