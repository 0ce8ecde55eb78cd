"""BERT-style decoders: BERT, RoBERTa (XLM-RoBERTa, CamemBERT) and ELECTRA as causal LMs.

Post-norm layers (LayerNorm after each residual), embeddings word + token type 0 + position,
then a LayerNorm; the LM head transforms (dense, activation, LayerNorm) before projecting onto
the vocabulary. They differ in where positions start:
  BERT, ELECTRA: position = tokens before this one (0 for the start token);
  RoBERTa: padding_idx + 1 + non-pad tokens before this one (its "nonpad" rule, as fairseq).
manga-ocr (kha-white/manga-ocr-base) is DeiT/ViT + BertLMHeadModel.
"""

from __future__ import annotations

from typing import Any

from edgecap.errors import UnsupportedModelError

from .registry import activation, layer_norm, linear, register_decoder, to_numpy
from .weights import Attention, Decoder, DecoderLayer


def _check(cfg: Any) -> None:
    kind = getattr(cfg, "position_embedding_type", "absolute") or "absolute"
    if kind != "absolute":
        raise UnsupportedModelError(f"{cfg.model_type} decoder: position_embedding_type {kind!r} (only 'absolute')")
    if not getattr(cfg, "add_cross_attention", False):
        raise UnsupportedModelError(f"{cfg.model_type} decoder without cross-attention (add_cross_attention=False)")


def _attention(block: Any, scale: float) -> Attention:
    inner, out = block.self, block.output
    return Attention(linear(inner.query, scale), linear(inner.key), linear(inner.value), linear(out.dense))


def _layers(encoder: Any, cfg: Any) -> list[DecoderLayer]:
    scale = (cfg.hidden_size // cfg.num_attention_heads) ** -0.5
    return [
        DecoderLayer(
            self_attn=_attention(layer.attention, scale),
            cross_attn=_attention(layer.crossattention, scale),
            ln_self=layer_norm(layer.attention.output.LayerNorm),
            ln_cross=layer_norm(layer.crossattention.output.LayerNorm),
            ln_mlp=layer_norm(layer.output.LayerNorm),
            fc1=linear(layer.intermediate.dense),
            fc2=linear(layer.output.dense),
            act=activation(cfg.hidden_act, cfg.model_type),
        )
        for layer in encoder.layer
    ]


def _decoder(base: Any, cfg: Any, head_dense: Any, head_ln: Any, head_act: str, vocab_proj: Any,
             nonpad_positions: bool) -> Decoder:
    _check(cfg)
    emb = base.embeddings
    # token type 0 is added to every token: fold it into the token table, in transformers' order
    # ((word + type) + position).
    token_emb = to_numpy(emb.word_embeddings.weight) + to_numpy(emb.token_type_embeddings.weight)[0]
    rows = int(emb.position_embeddings.weight.shape[0])
    pad = cfg.pad_token_id
    if nonpad_positions:
        kind, offset, max_pos = "nonpad", 0, rows - pad - 1
    else:
        kind, offset, max_pos = "offset", 0, rows
    proj = getattr(emb, "embeddings_project", None) or getattr(base, "embeddings_project", None)
    return Decoder(
        token_emb=token_emb,
        pos_table=to_numpy(emb.position_embeddings.weight),
        position_kind=kind,
        pos_offset=offset,
        pad_idx=pad,
        emb_ln=layer_norm(emb.LayerNorm),
        layers=_layers(base.encoder, cfg),
        final_ln=None,
        lm_head=linear(vocab_proj),
        num_heads=cfg.num_attention_heads,
        pre_norm=False,
        max_positions=int(max_pos),
        head_transform=linear(head_dense),
        head_act=activation(head_act, cfg.model_type),
        head_ln=layer_norm(head_ln),
        emb_proj=linear(proj) if proj is not None else None,
    )


@register_decoder("bert")
def bert_decoder(module: Any) -> Decoder:
    """BertLMHeadModel: `cls.predictions.transform` then `cls.predictions.decoder`."""
    head = module.cls.predictions
    t = head.transform
    return _decoder(module.bert, module.config, t.dense, t.LayerNorm, module.config.hidden_act, head.decoder,
                    nonpad_positions=False)


@register_decoder("roberta", "xlm-roberta", "camembert")
def roberta_decoder(module: Any) -> Decoder:
    """RobertaForCausalLM and its copies: the head is dense + GELU + layer_norm + decoder."""
    head = module.lm_head
    base = getattr(module, "roberta", None) or getattr(module, "camembert", None)
    return _decoder(base, module.config, head.dense, head.layer_norm, "gelu", head.decoder, nonpad_positions=True)


@register_decoder("electra")
def electra_decoder(module: Any) -> Decoder:
    """ElectraForCausalLM: embeddings may be narrower than the layers (embeddings_project)."""
    pred = module.generator_predictions  # dense + GELU + LayerNorm, in the embedding width
    return _decoder(module.electra, module.config, pred.dense, pred.LayerNorm, "gelu", module.generator_lm_head,
                    nonpad_positions=False)
