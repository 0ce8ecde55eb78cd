"""Model families: one registry entry per encoder or decoder type.

Each entry turns a Hugging Face sub-module into the family-neutral weights of `weights.py`.
Adding a family is one function plus `@register_encoder("type")` and its parity tests
(onnxruntime-genai's 34-branch if/elif dispatch is what this avoids).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgecap.errors import UnsupportedModelError

from .weights import Attention, Decoder, DecoderLayer, Encoder, EncoderLayer, LayerNorm, Linear

ENCODERS: dict[str, Callable[[Any], Encoder]] = {}
DECODERS: dict[str, Callable[[Any], Decoder]] = {}

# Activations the graph builders implement (names as in transformers' ACT2FN).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "quick_gelu", "silu", "swish")


def register_encoder(*model_types: str):
    def deco(fn):
        for t in model_types:
            ENCODERS[t] = fn
        return fn

    return deco


def register_decoder(*model_types: str):
    def deco(fn):
        for t in model_types:
            DECODERS[t] = fn
        return fn

    return deco


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
    """Fail at once, before any work, for a family edgecap cannot export."""
    for kind, model_type, table in (("encoder", encoder_type, ENCODERS), ("decoder", decoder_type, DECODERS)):
        if model_type not in table:
            raise UnsupportedModelError(
                f"unsupported {kind}: {model_type}; supported: {', '.join(sorted(table))}"
            )


def extract(model: Any) -> tuple[Encoder, Decoder]:
    """Family-neutral weights of a `VisionEncoderDecoderModel`."""
    enc_type, dec_type = model.config.encoder.model_type, model.config.decoder.model_type
    check_supported(enc_type, dec_type)
    encoder = ENCODERS[enc_type](model.encoder)
    decoder = DECODERS[dec_type](model.decoder)
    proj = getattr(model, "enc_to_dec_proj", None)
    if proj is not None:
        encoder.to_decoder = _linear(proj)
    return encoder, decoder


# --- helpers ---------------------------------------------------------------------------------


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy()


def _linear(mod, scale: float = 1.0) -> Linear:
    """nn.Linear (weight [out, in]) -> Linear ([in, out])."""
    b = _np(mod.bias) * scale if getattr(mod, "bias", None) is not None else None
    return Linear(np.ascontiguousarray(_np(mod.weight).T) * scale, b)


def _conv1d(w, b, scale: float = 1.0) -> Linear:
    """GPT-2's Conv1D already stores [in, out]."""
    return Linear(_np(w) * scale, _np(b) * scale)


def _ln(mod) -> LayerNorm:
    return LayerNorm(_np(mod.weight), _np(mod.bias), float(mod.eps))


def _act(name: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(f"{where}: unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return name


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
    prefix = [_np(emb.cls_token)[0]]
    if getattr(emb, "distillation_token", None) is not None:
        prefix.append(_np(emb.distillation_token)[0])
    heads = cfg.num_attention_heads
    scale = (cfg.hidden_size // heads) ** -0.5
    layers = []
    for layer in _vit_layers(module):
        q, k, v, o, fc1, fc2 = _vit_layer_parts(layer)
        layers.append(
            EncoderLayer(
                ln_attn=_ln(layer.layernorm_before),
                attn=Attention(q=_linear(q, scale), k=_linear(k), v=_linear(v), o=_linear(o)),
                ln_mlp=_ln(layer.layernorm_after),
                fc1=_linear(fc1),
                fc2=_linear(fc2),
                act=_act(cfg.hidden_act, cfg.model_type),
            )
        )
    size = cfg.image_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    conv = emb.patch_embeddings.projection
    return Encoder(
        patch_w=_np(conv.weight),
        patch_b=_np(conv.bias),
        prefix_tokens=np.concatenate(prefix, axis=0),
        pos_emb=_np(emb.position_embeddings)[0],
        layers=layers,
        final_ln=_ln(module.layernorm) if getattr(module, "layernorm", None) is not None else None,
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
        wq, wk, wv = (_np(sa.c_attn.weight)[:, j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(3))
        bq, bk, bv = (_np(sa.c_attn.bias)[j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(3))
        ck, cv = (_np(ca.c_attn.weight)[:, j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(2))
        cbk, cbv = (_np(ca.c_attn.bias)[j * cfg.n_embd : (j + 1) * cfg.n_embd] for j in range(2))
        layers.append(
            DecoderLayer(
                self_attn=Attention(
                    q=Linear(wq * scale, bq * scale),
                    k=Linear(wk, bk),
                    v=Linear(wv, bv),
                    o=_conv1d(sa.c_proj.weight, sa.c_proj.bias),
                ),
                cross_attn=Attention(
                    q=_conv1d(ca.q_attn.weight, ca.q_attn.bias, scale),
                    k=Linear(ck, cbk),
                    v=Linear(cv, cbv),
                    o=_conv1d(ca.c_proj.weight, ca.c_proj.bias),
                ),
                ln_self=_ln(block.ln_1),
                ln_cross=_ln(block.ln_cross_attn),
                ln_mlp=_ln(block.ln_2),
                fc1=_conv1d(block.mlp.c_fc.weight, block.mlp.c_fc.bias),
                fc2=_conv1d(block.mlp.c_proj.weight, block.mlp.c_proj.bias),
                act=_act(cfg.activation_function, "gpt2"),
            )
        )
    return Decoder(
        token_emb=_np(tr.wte.weight),
        pos_table=_np(tr.wpe.weight),
        position_kind="offset",
        pos_offset=0,
        pad_idx=None,
        emb_ln=None,
        layers=layers,
        final_ln=_ln(tr.ln_f),
        lm_head=_linear(module.lm_head),
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
                self_attn=Attention(_linear(sa.q_proj, scale), _linear(sa.k_proj), _linear(sa.v_proj), _linear(sa.out_proj)),
                cross_attn=Attention(_linear(ca.q_proj, scale), _linear(ca.k_proj), _linear(ca.v_proj), _linear(ca.out_proj)),
                ln_self=_ln(layer.self_attn_layer_norm),
                ln_cross=_ln(layer.encoder_attn_layer_norm),
                ln_mlp=_ln(layer.final_layer_norm),
                fc1=_linear(layer.fc1),
                fc2=_linear(layer.fc2),
                act=_act(cfg.activation_function, "trocr"),
            )
        )
    pad = cfg.pad_token_id
    if cfg.use_learned_position_embeddings:
        pos_table, kind, offset, max_pos = _np(dec.embed_positions.weight), "offset", 2, cfg.max_position_embeddings
    else:
        # The table transformers builds lazily, sized for every position we may feed.
        rows = pad + 1 + cfg.max_position_embeddings
        pos_table = _np(dec.embed_positions.get_embedding(rows, cfg.hidden_size, pad))
        kind, offset, max_pos = "nonpad", 0, cfg.max_position_embeddings
    return Decoder(
        token_emb=_np(dec.embed_tokens.weight) * np.float32(embed_scale),
        pos_table=pos_table,
        position_kind=kind,
        pos_offset=offset,
        pad_idx=pad,
        emb_ln=_ln(dec.layernorm_embedding) if getattr(dec, "layernorm_embedding", None) is not None else None,
        layers=layers,
        final_ln=None,
        lm_head=_linear(module.output_projection),
        num_heads=heads,
        pre_norm=False,
        max_positions=int(max_pos),
    )
