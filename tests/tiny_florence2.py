"""A tiny random Florence-2 checkpoint with the real one's structure, saved with its processor.

`Florence2ForConditionalGeneration` (DaViT with conv embeddings, window and channel attention;
the projector; a BART encoder and decoder) at toy sizes, and a `Florence2Processor` built as
transformers' conversion script builds the real one: a byte-level BPE tokenizer with Florence's added
special tokens (`<od>`, `<ocr>`, `<loc_0>`..`<loc_999>`, `<poly>`, `<sep>`...), the `<image>` token,
a CLIP image processor (ImageNet mean/std, bicubic resize, no crop) with `image_seq_length`, and the
post-processor config of florence-community's checkpoints. The generation config is Florence-2's
(3 beams, no_repeat_ngram_size 3, forced BOS/EOS, early stopping).

DESIGN.md section 4's advice for decisive logits: a wide init (std 0.2). The embeddings stay tied as
in the real model (its lm_head is the shared token table): with this init the captions still depend
on the image and the logits' top two are far apart.

Each transformers line builds its own checkpoint with its own classes (4.57's BartTokenizerFast and
5.x's tokenizer take the image token differently), from the same seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# The real tokenizer's added special tokens, in its order (transformers' convert_florence2 script).
EXTRA_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
                   "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                   "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"])
# florence-community's post_processor_config, its banned grounding phrases shortened
POST_PROCESSOR = {
    "ocr": {"pattern": r"(.+?)" + r"<loc_(\d+)>" * 8, "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": ["it", "the image", "image", "the", "a", "an", "a group"]},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {}, "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}
IMAGE_HW = (48, 64)  # stage 1: 12x16 tokens, stage 2: 6x8 (windows of 4 pad it to 8x8)
IMAGE_TOKENS = 1 + 6 * 8
LEGACY = transformers.__version__.startswith("4.")


def tokenizer():
    """A byte-level BPE tokenizer with BART's special tokens and Florence's added ones."""
    from transformers import BartTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials + EXTRA_TOKENS + ["<image>"]])
    names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                 sep_token="</s>", cls_token="<s>")
    if LEGACY:
        return BartTokenizerFast(tokenizer_object=tok, additional_special_tokens=EXTRA_TOKENS,
                                 extra_special_tokens={"image_token": "<image>"}, **names)
    return BartTokenizerFast(tokenizer_object=tok, extra_special_tokens=EXTRA_TOKENS, image_token="<image>", **names)


def processor(image_hw: tuple[int, int] = IMAGE_HW, image_tokens: int = IMAGE_TOKENS):
    from transformers import CLIPImageProcessor, Florence2Processor

    h, w = image_hw
    images = CLIPImageProcessor(size={"height": h, "width": w}, do_center_crop=False, crop_size={"height": h, "width": w},
                                resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                image_seq_length=image_tokens)
    return Florence2Processor(image_processor=images, tokenizer=tokenizer(), post_processor_config=POST_PROCESSOR)


def build(out: Path, seed: int = 0, max_new_tokens: int = 16, tie: bool = True, **generation) -> Path:
    """Write the checkpoint (model, generation config, processor) to `out`."""
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    proc = processor()
    vision = dict(depths=[1, 1], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4], patch_size=[7, 3],
                  patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], window_size=4,
                  projection_dim=32, max_position_embeddings=10, max_temporal_embeddings=4, drop_path_rate=0.0,
                  initializer_range=0.2)
    text = dict(model_type="bart", vocab_size=len(proc.tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=160, init_std=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, scale_embedding=False,
                tie_word_embeddings=tie)
    torch.manual_seed(seed)
    cfg = Florence2Config(vision_config=vision, text_config=text, image_token_id=proc.tokenizer.image_token_id,
                          tie_word_embeddings=tie)
    model = Florence2ForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    settings = dict(num_beams=3, no_repeat_ngram_size=3, early_stopping=True, forced_bos_token_id=0,
                    forced_eos_token_id=2, decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                    max_new_tokens=max_new_tokens, max_length=None)
    for key, value in {**settings, **generation}.items():
        setattr(gen, key, value)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def load(ckpt: Path):
    """(model, processor) as a user loads them, eager attention."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(ckpt, attn_implementation="eager").eval()
    return model, AutoProcessor.from_pretrained(ckpt)


def pil_image_processor(ckpt: Path):
    """The checkpoint's CLIP image processor, PIL backend (5.x picks torchvision's when it is installed;
    edgecap reproduces the PIL one, as for every family)."""
    if LEGACY:
        from transformers import CLIPImageProcessor as Pil
    else:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Pil
    return Pil.from_pretrained(ckpt)


def generate(ckpt: Path, images, prompt: str, **kwargs):
    """transformers' generate() on the processor's inputs for `prompt` (the PIL processor's pixels),
    with scores: (output, processor)."""
    import numpy as np

    model, proc = load(ckpt)
    inputs = proc(text=[prompt] * len(images), images=list(images), return_tensors="pt")
    pixels = pil_image_processor(ckpt)(images=list(images), return_tensors="np")["pixel_values"]
    inputs["pixel_values"] = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, return_dict_in_generate=True, output_scores=True, **kwargs)
    return out, proc
