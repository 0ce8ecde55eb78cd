"""Model families: which encoders and decoders edgecap exports, and the first few of them.

Every family is a registry entry (`registry.py`); ViT/DeiT, GPT-2 and TrOCR live here, the
others in one small module each (`family_bert`, `family_bart`, `family_swin`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecap.errors import UnsupportedModelError

from . import family_bart, family_bert, family_florence2, family_swin  # noqa: F401  (they register themselves)
from .registry import (
    DECODERS, ENCODERS, activation, conv1d, layer_norm, linear, register_decoder, register_encoder, to_numpy,
)
from .weights import Attention, Decoder, DecoderLayer, Encoder, EncoderLayer, Linear


def repair_loaded(model: Any) -> None:
    """Undo known loading glitches of transformers before we verify against it.

    transformers 5.x `from_pretrained` leaves TrOCR's sinusoidal position table (a plain tensor
    attribute, not a buffer) on the meta device, so the PyTorch reference itself cannot run.
    It is a pure function of the config: rebuild it.
    """
    dec = getattr(getattr(getattr(model, "decoder", None), "model", None), "decoder", None)
    pos = getattr(dec, "embed_positions", None)
    weights = getattr(pos, "weights", None)
    if weights is not None and getattr(weights, "is_meta", False):
        pos.weights = pos.get_embedding(weights.shape[0], pos.embedding_dim, pos.padding_idx)


def check_supported(encoder_type: str, decoder_type: str) -> None:
    """Fail at once, before any work, naming every part edgecap cannot export."""
    problems = [f"unsupported {kind}: {model_type}"
                for kind, model_type, table in (("encoder", encoder_type, ENCODERS), ("decoder", decoder_type, DECODERS))
                if model_type not in table]
    if problems:
        raise UnsupportedModelError(
            f"{'; '.join(problems)}; supported encoders: {', '.join(sorted(ENCODERS))}; "
            f"decoders: {', '.join(sorted(DECODERS))}"
        )


def model_types(config: Any) -> tuple[str, str]:
    """(encoder type, decoder type) of a checkpoint's config, as the manifest's source records them."""
    if family_florence2.is_florence2(config):
        return family_florence2.MODEL_TYPE, config.text_config.model_type
    return config.encoder.model_type, config.decoder.model_type


def extract(model: Any, image_hw: tuple[int, int] | None = None) -> tuple[Any, Decoder]:
    """Family-neutral weights of a `VisionEncoderDecoderModel`, or of a Florence-2 model at input size
    `image_hw` (its DaViT takes any size; the bundle's is its image processor's)."""
    if family_florence2.is_florence2(model.config):
        if image_hw is None:
            raise ValueError("a Florence-2 model's weights are extracted for an input size (image_hw)")
        return family_florence2.extract(model, image_hw)
    enc_type, dec_type = model.config.encoder.model_type, model.config.decoder.model_type
    check_supported(enc_type, dec_type)
    encoder = ENCODERS[enc_type](model.encoder)
    decoder = DECODERS[dec_type](model.decoder)
    proj = getattr(model, "enc_to_dec_proj", None)
    if proj is not None:
        encoder.to_decoder = linear(proj)
    return encoder, decoder


# --- encoders --------------------------------------------------------------------------------


def _vit_layers(module):
    """transformers 5.x keeps the layers in `layers`; 4.x in `encoder.layer`."""
    if hasattr(module, "layers"):
        return module.layers
    return module.encoder.layer


def _vit_layer_parts(layer):
    """(q, k, v, o, fc1, fc2) modules under either naming scheme (5.x `q_proj`..., 4.x `query`...)."""
    att = layer.attention
    if hasattr(att, "q_proj"):
        return att.q_proj, att.k_proj, att.v_proj, att.o_proj, layer.mlp.fc1, layer.mlp.fc2
    inner = att.attention
    return inner.query, inner.key, inner.value, att.output.dense, layer.intermediate.dense, layer.output.dense


@register_encoder("vit", "deit")
def vit_like_encoder(module) -> Encoder:
    """ViTModel / DeiTModel: patch conv, class (+ distillation) token, learned positions, pre-norm layers."""
    cfg = module.config
    emb = module.embeddings
    prefix = [to_numpy(emb.cls_token)[0]]
    if getattr(emb, "distillation_token", None) is not None:
        prefix.append(to_numpy(emb.distillation_token)[0])
    heads = cfg.num_attention_heads
    scale = (cfg.hidden_size // heads) ** -0.5
    layers = []
    for layer in _vit_layers(module):
        q, k, v, o, fc1, fc2 = _vit_layer_parts(layer)
        layers.append(
            EncoderLayer(
                ln_attn=layer_norm(layer.layernorm_before),
                attn=Attention(q=linear(q, scale), k=linear(k), v=linear(v), o=linear(o)),
                ln_mlp=layer_norm(layer.layernorm_after),
                fc1=linear(fc1),
                fc2=linear(fc2),
                act=activation(cfg.hidden_act, cfg.model_type),
            )
        )
    size = cfg.image_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    conv = emb.patch_embeddings.projection
    return Encoder(
        patch_w=to_numpy(conv.weight),
        patch_b=to_numpy(conv.bias),
        prefix_tokens=np.concatenate(prefix, axis=0),
        pos_emb=to_numpy(emb.position_embeddings)[0],
        layers=layers,
        final_ln=layer_norm(module.layernorm) if getattr(module, "layernorm", None) is not None else None,
        num_heads=heads,
        image_hw=hw,
        patch=int(cfg.patch_size),
        channels=int(cfg.num_channels),
        to_decoder=None,
    )


# --- decoders --------------------------------------------------------------------------------


@register_decoder("gpt2")
def gpt2_decoder(module) -> Decoder:
    """GPT2LMHeadModel with add_cross_attention: pre-norm, Conv1D weights, learned absolute positions."""
    cfg = module.config
    tr = module.transformer
    heads = cfg.n_head
    if not cfg.add_cross_attention:
        raise UnsupportedModelError("gpt2 decoder without cross-attention (add_cross_attention=False)")
    if getattr(cfg, "reorder_and_upcast_attn", False):
        # Same math, different float order; parity would still hold but we have not tested it.
        pass
    head_dim = cfg.n_embd // heads
    layers = []
    for i, block in enumerate(tr.h):
        scale = head_dim**-0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)
        sa, ca = block.attn, block.crossattention
        wq, wk, wv = (to_numpy(sa.c_attn.weight)[:, j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(3))
        bq, bk, bv = (to_numpy(sa.c_attn.bias)[j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(3))
        ck, cv = (to_numpy(ca.c_attn.weight)[:, j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(2))
        cbk, cbv = (to_numpy(ca.c_attn.bias)[j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(2))
        layers.append(
            DecoderLayer(
                self_attn=Attention(
                    q=Linear(wq * scale, bq * scale),
                    k=Linear(wk, bk),
                    v=Linear(wv, bv),
                    o=conv1d(sa.c_proj.weight, sa.c_proj.bias),
                ),
                cross_attn=Attention(
                    q=conv1d(ca.q_attn.weight, ca.q_attn.bias, scale),
                    k=Linear(ck, cbk),
                    v=Linear(cv, cbv),
                    o=conv1d(ca.c_proj.weight, ca.c_proj.bias),
                ),
                ln_self=layer_norm(block.ln_1),
                ln_cross=layer_norm(block.ln_cross_attn),
                ln_mlp=layer_norm(block.ln_2),
                fc1=conv1d(block.mlp.c_fc.weight, block.mlp.c_fc.bias),
                fc2=conv1d(block.mlp.c_proj.weight, block.mlp.c_proj.bias),
                act=activation(cfg.activation_function, "gpt2"),
            )
        )
    return Decoder(
        token_emb=to_numpy(tr.wte.weight),
        pos_table=to_numpy(tr.wpe.weight),
        position_kind="offset",
        pos_offset=0,
        pad_idx=None,
        emb_ln=None,
        layers=layers,
        final_ln=layer_norm(tr.ln_f),
        lm_head=linear(module.lm_head),
        num_heads=heads,
        pre_norm=True,
        max_positions=int(cfg.n_positions),
    )


@register_decoder("trocr")
def trocr_decoder(module) -> Decoder:
    """TrOCRForCausalLM: post-norm (BART-like), scaled embeddings, learned (+2) or fairseq sinusoidal positions."""
    cfg = module.config
    dec = module.model.decoder
    heads = cfg.decoder_attention_heads
    scale = (cfg.hidden_size // heads) ** -0.5
    embed_scale = float(np.sqrt(cfg.hidden_size)) if cfg.scale_embedding else 1.0
    layers = []
    for layer in dec.layers:
        sa, ca = layer.self_attn, layer.encoder_attn
        layers.append(
            DecoderLayer(
                self_attn=Attention(linear(sa.q_proj, scale), linear(sa.k_proj), linear(sa.v_proj), linear(sa.out_proj)),
                cross_attn=Attention(linear(ca.q_proj, scale), linear(ca.k_proj), linear(ca.v_proj), linear(ca.out_proj)),
                ln_self=layer_norm(layer.self_attn_layer_norm),
                ln_cross=layer_norm(layer.encoder_attn_layer_norm),
                ln_mlp=layer_norm(layer.final_layer_norm),
                fc1=linear(layer.fc1),
                fc2=linear(layer.fc2),
                act=activation(cfg.activation_function, "trocr"),
            )
        )
    pad = cfg.pad_token_id
    if cfg.use_learned_position_embeddings:
        pos_table, kind, offset, max_pos = to_numpy(dec.embed_positions.weight), "offset", 2, cfg.max_position_embeddings
    else:
        # The table transformers builds lazily, sized for every position we may feed.
        rows = pad + 1 + cfg.max_position_embeddings
        pos_table = to_numpy(dec.embed_positions.get_embedding(rows, cfg.hidden_size, pad))
        kind, offset, max_pos = "nonpad", 0, cfg.max_position_embeddings
    return Decoder(
        token_emb=to_numpy(dec.embed_tokens.weight) * np.float32(embed_scale),
        pos_table=pos_table,
        position_kind=kind,
        pos_offset=offset,
        pad_idx=pad,
        emb_ln=layer_norm(dec.layernorm_embedding) if getattr(dec, "layernorm_embedding", None) is not None else None,
        layers=layers,
        final_ln=None,
        lm_head=linear(module.output_projection),
        num_heads=heads,
        pre_norm=False,
        max_positions=int(max_pos),
    )
