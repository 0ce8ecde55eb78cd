"""Florence-2 (`Florence2ForConditionalGeneration`, model_type "florence2", transformers 4.57 and 5.x).

Not a VisionEncoderDecoderModel: a DaViT vision tower and a projector turn the image into tokens,
which stand where `Florence2Processor` puts its `<image>` placeholders (before the task prompt's
tokens); a BART encoder reads image and prompt tokens together; a BART decoder generates. edgecap's
split holds: the encoder graph (`davit_graph.py`) takes the pixels *and* the prompt's token ids and
returns every decoder layer's cross K/V; the decoder step is the `bart` family's.

This module reads the weights (`extract`), the processor's prompt and answer tables (`spec`), and
wraps the model so export's verification can call it as it calls a VisionEncoderDecoderModel
(`PromptedModel`).

The older `trust_remote_code` layout (microsoft/Florence-2-base before conversion: vision config
model_type "davit", text config "florence2_language") is refused with a pointer to transformers'
conversion: its config alone could be mapped, but its weights are named differently, its tokenizer
lacks the `<image>` token the native model's vocabulary adds (and the `<loc_N>` tokens, which its
remote processor code adds at load), so mapping it means re-implementing that code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgecap import florence2
from edgecap import manifest as mf
from edgecap.errors import UnsupportedModelError

from .family_bart import bart_decoder_weights
from .registry import activation, layer_norm, linear, to_numpy
from .weights import Attention, Conv, DavitBlock, DavitStage, Decoder, EncoderLayer, Florence2Encoder, Linear

MODEL_TYPE = "florence2"
DEFAULT_PROMPT = "<CAPTION>"


def is_florence2(config: Any) -> bool:
    return getattr(config, "model_type", None) == MODEL_TYPE


def check_layout(model_dir: str) -> None:
    """Refuse the remote-code layout before transformers misreads it (see the module docstring)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        return
    if raw.get("model_type") != MODEL_TYPE:
        return
    vision, text = raw.get("vision_config") or {}, raw.get("text_config") or {}
    if vision.get("model_type") == "davit" or text.get("model_type") == "florence2_language":
        raise UnsupportedModelError(
            f"{model_dir}: a Florence-2 checkpoint in the older trust_remote_code layout (vision model_type 'davit'); "
            "edgecap exports the native transformers layout: use a converted checkpoint (florence-community/"
            "Florence-2-base, -large, -base-ft, -large-ft) or convert it with transformers' "
            "models/florence2/convert_florence2_original_pytorch_to_hf.py")


def load(model: str) -> tuple[Any, Any, dict[str, Any], Any]:
    """(model, tokenizer, image processor config, processor) of a native Florence-2 checkpoint."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    hf_model = Florence2ForConditionalGeneration.from_pretrained(model, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(model)
    proc_cfg = processor.image_processor.to_dict()
    proc_cfg.setdefault("image_processor_type", type(processor.image_processor).__name__)
    return hf_model, processor.tokenizer, proc_cfg, processor


# --- weights -------------------------------------------------------------------------------------


def _conv(mod: Any, groups: int = 1) -> Conv:
    return Conv(to_numpy(mod.weight), to_numpy(mod.bias) if mod.bias is not None else None,
                stride=int(mod.stride[0]), padding=int(mod.padding[0]), groups=groups)


def _split_qkv(qkv: Any, proj: Any, dim: int, q_scale: float) -> Attention:
    """A fused qkv Linear (q, k, v stacked along the output axis) and its output projection."""
    w, b = to_numpy(qkv.weight), to_numpy(qkv.bias) if qkv.bias is not None else None
    parts = [Linear(np.ascontiguousarray(w[i * dim:(i + 1) * dim].T), None if b is None else b[i * dim:(i + 1) * dim])
             for i in range(3)]
    q = Linear(parts[0].w * np.float32(q_scale), None if parts[0].b is None else parts[0].b * np.float32(q_scale))
    return Attention(q, parts[1], parts[2], linear(proj))


def _half(blk: Any, kind: str, cfg: Any, stage: int, tokens: int) -> DavitBlock:
    dim = int(cfg.embed_dim[stage])
    if kind == "window":
        att, heads = blk.window_attn, int(cfg.num_heads[stage])
        scale = (dim // heads) ** -0.5
    else:
        att, heads = blk.channel_attn, int(cfg.num_groups[stage])
        scale = tokens ** -0.5  # channel attention scales by the token count, not the head size
    return DavitBlock(kind=kind, conv1=_conv(blk.conv1, dim), ln_attn=layer_norm(blk.norm1),
                      attn=_split_qkv(att.qkv, att.proj, dim, scale),
                      conv2=_conv(blk.conv2, dim), ln_mlp=layer_norm(blk.norm2), fc1=linear(blk.ffn.fc1),
                      fc2=linear(blk.ffn.fc2), act=activation(cfg.activation_function, "florence2 vision"),
                      heads=heads, window=int(cfg.window_size))


def _davit(tower: Any, cfg: Any, image_hw: tuple[int, int]) -> list[DavitStage]:
    stages, (h, w) = [], image_hw
    for i, (embed, blocks) in enumerate(zip(tower.convs, tower.blocks)):
        conv = _conv(embed.conv)
        k = int(embed.conv.kernel_size[0])
        h, w = (h + 2 * conv.padding - k) // conv.stride + 1, (w + 2 * conv.padding - k) // conv.stride + 1
        halves = []
        for blk in blocks:
            halves.append(_half(blk.spatial_block, "window", cfg, i, h * w))
            halves.append(_half(blk.channel_block, "channel", cfg, i, h * w))
        stages.append(DavitStage(conv, layer_norm(embed.norm), bool(embed.pre_norm), (h, w), halves))
    return stages


def _image_positions(projector: Any, grid: tuple[int, int]) -> np.ndarray:
    """[rows * cols, channels]: column embedding (first half of the channels) and row embedding per
    token, row-major, plus the temporal embedding of the one frame."""
    rows, cols = grid
    table = projector.image_position_embed
    col = to_numpy(table.column_embeddings.weight)[:cols]
    row = to_numpy(table.row_embeddings.weight)[:rows]
    pos = np.concatenate([np.broadcast_to(col[None], (rows, cols, col.shape[1])),
                          np.broadcast_to(row[:, None], (rows, cols, row.shape[1]))], axis=-1)
    temporal = projector.visual_temporal_embed
    frames = temporal.pos_idx_to_embed
    if getattr(frames, "is_meta", False):  # a non-persistent buffer a meta-device load left unset
        sine, cosine = temporal.get_sinusoid_embeddings(temporal.max_seq_len, temporal.embed_dim)
        first = np.zeros(temporal.embed_dim, np.float32)
        first[0::2], first[1::2] = to_numpy(sine)[0], to_numpy(cosine)[0]
    else:
        first = to_numpy(frames)[0]
    return np.ascontiguousarray(pos.reshape(rows * cols, -1) + first[None])


def _bart_encoder(enc: Any, shared: Any, cfg: Any) -> tuple[np.ndarray, list[EncoderLayer]]:
    heads = cfg.encoder_attention_heads
    scale = (cfg.d_model // heads) ** -0.5
    layers = [EncoderLayer(
        ln_attn=layer_norm(layer.self_attn_layer_norm),
        attn=Attention(linear(layer.self_attn.q_proj, scale), linear(layer.self_attn.k_proj),
                       linear(layer.self_attn.v_proj), linear(layer.self_attn.out_proj)),
        ln_mlp=layer_norm(layer.final_layer_norm), fc1=linear(layer.fc1), fc2=linear(layer.fc2),
        act=activation(cfg.activation_function, "florence2 text"),
    ) for layer in enc.layers]
    # the prompt's embeddings: Florence2Model embeds input_ids with get_input_embeddings() (BART's
    # shared table, scaled as BartScaledWordEmbedding scales), the image's features go in unscaled
    embed_scale = getattr(shared, "embed_scale", None)
    if embed_scale is None:
        embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
    return to_numpy(shared.weight) * np.float32(embed_scale), layers


def extract(model: Any, image_hw: tuple[int, int]) -> tuple[Florence2Encoder, Decoder]:
    """Family-neutral weights of a Florence2ForConditionalGeneration at input size `image_hw`."""
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    if tcfg.model_type != "bart":
        raise UnsupportedModelError(f"florence2: text model {tcfg.model_type!r}, expected 'bart'")
    inner = model.model
    lm = inner.language_model
    stages = _davit(inner.vision_tower, vcfg, image_hw)
    projector = inner.multi_modal_projector
    token_emb, layers = _bart_encoder(lm.encoder, inner.get_input_embeddings(), tcfg)
    encoder = Florence2Encoder(
        stages=stages,
        image_pos=_image_positions(projector, stages[-1].grid),
        projection=linear(projector.image_projection),
        proj_ln=layer_norm(projector.image_proj_norm),
        token_emb=token_emb,
        pos_table=to_numpy(lm.encoder.embed_positions.weight),
        pos_offset=2,  # BartLearnedPositionalEmbedding's
        emb_ln=layer_norm(lm.encoder.layernorm_embedding),
        layers=layers,
        num_heads=int(tcfg.encoder_attention_heads),
        image_hw=tuple(image_hw),
        channels=int(vcfg.in_channels),
        max_positions=int(tcfg.max_position_embeddings),
    )
    decoder = bart_decoder_weights(lm.decoder, tcfg, model.lm_head, pre_norm=False)
    return encoder, decoder


# --- prompts and answers ------------------------------------------------------------------------


def spec(processor: Any, encoder: Florence2Encoder, default_prompt: str | None) -> mf.Florence2Spec:
    """The processor's prompt and answer tables as the bundle records them (edgecap/florence2.py)."""
    tasks = ([mf.TaskPrompt(t, q, False) for t, q in processor.task_prompts_without_inputs.items()]
             + [mf.TaskPrompt(t, q, True) for t, q in processor.task_prompts_with_input.items()])
    post = processor.post_processor
    ocr = post.parse_task_config.get("ocr", {})
    tok = processor.tokenizer
    # Florence2PostProcessor reads the upper-case keys; florence-community's config spells them in lower
    # case, so its checkpoints run with the default pattern and no area threshold: recorded as it runs.
    return mf.Florence2Spec(
        tasks=tasks,
        answer_types=dict(processor.tasks_answer_post_processing_type),
        default_prompt=default_prompt or DEFAULT_PROMPT,
        image_tokens=int(processor.num_image_tokens),
        text_prefix=str(tok.bos_token),
        text_suffix=str(tok.eos_token),
        encoder_max_positions=encoder.max_positions,
        location_bins=[int(b) for b in post.quantize_bins],
        ocr_pattern=ocr.get("PATTERN"),
        ocr_area_threshold=float(ocr.get("AREA_THRESHOLD", 0.0)),
        banned_grounding_tokens=sorted(post.banned_grounding_tokens),
    )


def prompts(processor: Any, encoder: Florence2Encoder, gen: mf.Generation,
            default_prompt: str | None) -> tuple[mf.Florence2Spec, mf.Generation]:
    """The bundle's Florence-2 section and its generation defaults with the prompt read by the encoder:
    prompt_ids are the default prompt's encoder tokens (ValueError naming a bad prompt or geometry)."""
    if int(processor.num_image_tokens) != encoder.seq_len:
        raise ValueError(f"the processor inserts {processor.num_image_tokens} <image> tokens (image_seq_length) but "
                         f"the vision tower makes {encoder.seq_len} at {encoder.image_hw[0]}x{encoder.image_hw[1]}")
    section = spec(processor, encoder, default_prompt)
    backend = processor.tokenizer.backend_tokenizer

    def tokenize(text: str) -> list[int]:  # as the runtime does it (edgecap.florence2.encoder_prompt_ids)
        return backend.encode(text, add_special_tokens=False).ids

    ids = florence2.encoder_prompt_ids(section.default_prompt, section, tokenize)
    unknown = processor.tokenizer.unk_token_id
    if unknown is not None and unknown in ids:
        raise ValueError(f"--prompt {section.default_prompt!r} has tokens the tokenizer does not know")
    if encoder.seq_len + len(ids) > encoder.max_positions:
        raise ValueError(f"--prompt {section.default_prompt!r}: {len(ids)} tokens after {encoder.seq_len} image tokens "
                         f"exceed the encoder's {encoder.max_positions} positions")
    return section, mf.Generation(**{**gen.__dict__, "prompt_ids": [int(t) for t in ids], "prompt_target": "encoder"})


class PromptedModel:
    """A Florence-2 model called the way export's verification calls a VisionEncoderDecoderModel
    (`generate(pixel_values=...)`, `model(pixel_values=..., decoder_input_ids=...)`): each image gets
    the processor's input_ids for the bundle's default prompt (its `<image>` placeholders, then
    `prompt_ids`)."""

    def __init__(self, model: Any, prompt_ids: list[int], image_tokens: int) -> None:
        self.model, self.config = model, model.config
        self.ids = [int(model.config.image_token_id)] * image_tokens + list(prompt_ids)

    def _input_ids(self, pixel_values: Any):
        import torch

        return torch.tensor([self.ids] * int(pixel_values.shape[0]), dtype=torch.long, device=pixel_values.device)

    def parameters(self):
        return self.model.parameters()

    def double(self) -> "PromptedModel":
        """In float64 (verification's reference); in place, as torch's Module.double."""
        self.model = self.model.double()
        return self

    def generate(self, pixel_values: Any, **kwargs: Any) -> Any:
        return self.model.generate(pixel_values=pixel_values, input_ids=self._input_ids(pixel_values), **kwargs)

    def __call__(self, pixel_values: Any, **kwargs: Any) -> Any:
        return self.model(pixel_values=pixel_values, input_ids=self._input_ids(pixel_values), **kwargs)
