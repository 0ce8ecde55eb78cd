"""BART-style decoders: BART (post-norm) and mBART (pre-norm, with a final LayerNorm).

Both: learned positions offset by 2 (fairseq's convention), token embeddings scaled by
sqrt(d_model) when `scale_embedding`, a LayerNorm on the embeddings. mBART is Donut's and
Nougat's decoder. `BartForCausalLM` / `MBartForCausalLM` have no final_logits_bias.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import activation, layer_norm, linear, register_decoder, to_numpy
from .weights import Attention, Decoder, DecoderLayer


def _attention(att: Any, scale: float) -> Attention:
    return Attention(linear(att.q_proj, scale), linear(att.k_proj), linear(att.v_proj), linear(att.out_proj))


def bart_like(module: Any, pre_norm: bool) -> Decoder:
    return bart_decoder_weights(module.model.decoder, module.config, module.lm_head, pre_norm)


def bart_decoder_weights(dec: Any, cfg: Any, lm_head: Any, pre_norm: bool) -> Decoder:
    """A BART/mBART decoder stack (`BartDecoder`), its config and the LM head that reads it
    (`BartForCausalLM`'s, or Florence-2's, whose BART is inside a larger model)."""
    heads = cfg.decoder_attention_heads
    scale = (cfg.d_model // heads) ** -0.5
    embed_scale = float(np.sqrt(cfg.d_model)) if cfg.scale_embedding else 1.0
    layers = [
        DecoderLayer(
            self_attn=_attention(layer.self_attn, scale),
            cross_attn=_attention(layer.encoder_attn, scale),
            ln_self=layer_norm(layer.self_attn_layer_norm),
            ln_cross=layer_norm(layer.encoder_attn_layer_norm),
            ln_mlp=layer_norm(layer.final_layer_norm),
            fc1=linear(layer.fc1),
            fc2=linear(layer.fc2),
            act=activation(cfg.activation_function, cfg.model_type),
        )
        for layer in dec.layers
    ]
    final = getattr(dec, "layer_norm", None)
    return Decoder(
        token_emb=to_numpy(dec.embed_tokens.weight) * np.float32(embed_scale),
        pos_table=to_numpy(dec.embed_positions.weight),
        position_kind="offset",
        pos_offset=2,
        pad_idx=cfg.pad_token_id,
        emb_ln=layer_norm(dec.layernorm_embedding) if getattr(dec, "layernorm_embedding", None) is not None else None,
        layers=layers,
        final_ln=layer_norm(final) if final is not None else None,
        lm_head=linear(lm_head),
        num_heads=heads,
        pre_norm=pre_norm,
        max_positions=int(cfg.max_position_embeddings),
    )


@register_decoder("bart")
def bart_decoder(module: Any) -> Decoder:
    return bart_like(module, pre_norm=False)


@register_decoder("mbart")
def mbart_decoder(module: Any) -> Decoder:
    return bart_like(module, pre_norm=True)
