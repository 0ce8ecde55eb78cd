"""A tiny random Florence-2 checkpoint with the real one's structure, saved with its processor.

`Florence2ForConditionalGeneration` (DaViT with conv embeddings, window and channel attention; the
projector; a BART encoder and decoder) at toy sizes, with Florence-2's generation config (3 beams,
no_repeat_ngram_size 3, forced BOS/EOS, early stopping) and a `Florence2Processor` made as
transformers' conversion script makes the real one (edgecap_export.synthetic.florence2_checkpoint).

DESIGN.md section 4's advice for decisive logits: a wide init (std 0.2). The embeddings stay tied as
in the real model (its lm_head is the shared token table): with this init the answers still depend
on the image and the logits' top two are far apart. Each transformers line builds its own
checkpoint with its own classes, from the same seed (the two lines then give the same weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from edgecap_export.synthetic import FLORENCE2_POST_PROCESSOR, davit_tokens, florence2_checkpoint, florence2_processor

POST_PROCESSOR = FLORENCE2_POST_PROCESSOR
IMAGE_HW = (48, 64)  # stage 1: 12x16 tokens, stage 2: 6x8 (windows of 4 pad it to 8x8)
VISION = dict(depths=[1, 1], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4], patch_size=[7, 3],
              patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], window_size=4,
              projection_dim=32, max_position_embeddings=10, max_temporal_embeddings=4, drop_path_rate=0.0,
              initializer_range=0.2)
TEXT = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=160, init_std=0.2, scale_embedding=False)
IMAGE_TOKENS = davit_tokens(VISION, IMAGE_HW)
LEGACY = transformers.__version__.startswith("4.")


def processor():
    return florence2_processor(IMAGE_HW, IMAGE_TOKENS)


def build(out: Path, seed: int = 0, max_new_tokens: int = 16, tie: bool = True, **generation) -> Path:
    """Write the checkpoint (model, generation config, processor) to `out`."""
    return florence2_checkpoint(out, VISION, TEXT, IMAGE_HW, seed=seed, tie=tie, max_new_tokens=max_new_tokens,
                                **generation)


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
