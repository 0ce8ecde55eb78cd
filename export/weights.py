"""Family-neutral weights: what the graph builders consume.

Every supported encoder or decoder family is reduced to these few dataclasses (numpy float32,
matrices laid out [in, out] so a graph multiplies `x @ w`). The graph builders never see a
family name, so adding a family is one extractor in `families.py`, not a new graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass
class Linear:
    w: Array  # [in, out]
    b: Array | None  # [out]


@dataclass
class LayerNorm:
    w: Array
    b: Array
    eps: float


@dataclass
class Attention:
    """Multi-head attention projections. `q` already carries the 1/sqrt(head_dim) scaling."""

    q: Linear
    k: Linear
    v: Linear
    o: Linear


@dataclass
class EncoderLayer:
    """A pre-norm transformer encoder layer (ViT, DeiT, BEiT-like)."""

    ln_attn: LayerNorm
    attn: Attention
    ln_mlp: LayerNorm
    fc1: Linear
    fc2: Linear
    act: str


@dataclass
class Encoder:
    patch_w: Array  # [hidden, channels, patch, patch]
    patch_b: Array
    prefix_tokens: Array  # [n_prefix, hidden]: class (and distillation) tokens, prepended in order
    pos_emb: Array  # [n_prefix + n_patches, hidden]
    layers: list[EncoderLayer]
    final_ln: LayerNorm | None
    num_heads: int
    image_hw: tuple[int, int]
    patch: int
    channels: int
    to_decoder: Linear | None  # enc_to_dec_proj when encoder and decoder widths differ

    @property
    def hidden(self) -> int:
        return int(self.patch_w.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.pos_emb.shape[0])

    @property
    def prefix_count(self) -> int:
        """Tokens before the patches in the encoder's output (class, distillation)."""
        return int(self.prefix_tokens.shape[0])

    @property
    def cross_seq(self) -> int | str:
        """The cross K/V's sequence length in the graphs: fixed here (Florence-2's is symbolic)."""
        return self.seq_len

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows x columns of the encoder's output tokens (after the prefix tokens)."""
        return (self.image_hw[0] // self.patch, self.image_hw[1] // self.patch)

    def flops(self, dec: "Decoder") -> int:
        """Multiply-add FLOPs (x2) of one image through the encoder graph, cross K/V included."""
        s, e = self.seq_len, self.hidden
        n_patches = s - int(self.prefix_tokens.shape[0])
        total = 2 * n_patches * int(self.patch_w[0].size) * e
        for layer in self.layers:
            mats = (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o, layer.fc1, layer.fc2)
            total += 2 * s * sum(int(m.w.size) for m in mats) + 2 * 2 * s * s * e
        if self.to_decoder is not None:
            total += 2 * s * int(self.to_decoder.w.size)
        return total + cross_kv_flops(s, dec)


def cross_kv_flops(seq: int, dec: "Decoder") -> int:
    return 2 * seq * sum(int(l.cross_attn.k.w.size + l.cross_attn.v.w.size) for l in dec.layers)


@dataclass
class SwinBlock:
    """A Swin layer: pre-norm window attention (relative position bias, shifted windows) + MLP."""

    ln_attn: LayerNorm
    attn: Attention
    rel_bias: Array  # [heads, window*window, window*window]: the bias table gathered by its index
    ln_mlp: LayerNorm
    fc1: Linear
    fc2: Linear
    act: str
    window: int
    shift: int  # 0, or the cyclic shift of the shifted-window blocks


@dataclass
class SwinStage:
    grid: tuple[int, int]  # token rows x columns entering the stage
    num_heads: int
    blocks: list[SwinBlock]
    merge_ln: LayerNorm | None  # patch merging after the stage (all but the last)
    merge: Linear | None


@dataclass
class SwinEncoder:
    """Swin / Donut-Swin: patch embedding + LayerNorm, stages of window attention, patch merging.

    Every shape is known at export (the image size is fixed per bundle), so window partition,
    shifts and padding are constant Reshape/Transpose/Slice/Pad nodes in the graph.
    """

    patch_w: Array  # [embed, channels, patch, patch]
    patch_b: Array
    patch_ln: LayerNorm
    pos_emb: Array | None  # [tokens, embed] when use_absolute_embeddings
    stages: list[SwinStage]
    final_ln: LayerNorm | None  # SwinModel has one, DonutSwinModel not
    image_hw: tuple[int, int]
    patch: int
    channels: int
    to_decoder: Linear | None

    @property
    def layers(self) -> list[SwinBlock]:
        return [b for s in self.stages for b in s.blocks]

    @property
    def num_heads(self) -> int:
        return self.stages[-1].num_heads

    @property
    def hidden(self) -> int:
        last = self.stages[-1]
        return int(last.blocks[0].fc2.w.shape[1]) if last.blocks else int(self.patch_w.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.stages[-1].grid
        return (h, w)

    @property
    def prefix_count(self) -> int:
        return 0

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def cross_seq(self) -> int | str:
        return self.seq_len

    def flops(self, dec: "Decoder") -> int:
        """Multiply-add FLOPs (x2) of one image: projections, window attention, merges, cross K/V."""
        gh, gw = -(-self.image_hw[0] // self.patch), -(-self.image_hw[1] // self.patch)
        total = 2 * gh * gw * int(self.patch_w.size)
        for stage in self.stages:
            tokens = stage.grid[0] * stage.grid[1]
            for b in stage.blocks:
                mats = (b.attn.q, b.attn.k, b.attn.v, b.attn.o, b.fc1, b.fc2)
                total += 2 * tokens * sum(int(m.w.size) for m in mats)
                total += 2 * 2 * tokens * b.window * b.window * int(b.attn.q.w.shape[1])
            if stage.merge is not None:
                total += 2 * (tokens // 4) * int(stage.merge.w.size)
        if self.to_decoder is not None:
            total += 2 * self.seq_len * int(self.to_decoder.w.size)
        return total + cross_kv_flops(self.seq_len, dec)


@dataclass
class DecoderLayer:
    self_attn: Attention
    cross_attn: Attention  # k and v act on encoder states (projected once per image)
    ln_self: LayerNorm
    ln_cross: LayerNorm
    ln_mlp: LayerNorm
    fc1: Linear
    fc2: Linear
    act: str


@dataclass
class Decoder:
    """A decoder with cross-attention: GPT-2/mBART (pre-norm) and TrOCR/BART/BERT (post-norm) all fit."""

    token_emb: Array  # [vocab, hidden], already multiplied by any embedding scale
    pos_table: Array  # [positions, hidden]
    # How the position of the token fed at step `s` is found in pos_table:
    #   "offset": s + pos_offset (GPT-2: 0; TrOCR learned: 2)
    #   "nonpad": pad_idx + 1 + s, or pad_idx if the token is the pad token (fairseq sinusoidal)
    position_kind: str
    pos_offset: int
    pad_idx: int | None
    emb_ln: LayerNorm | None
    layers: list[DecoderLayer]
    final_ln: LayerNorm | None
    lm_head: Linear  # [hidden, vocab]
    num_heads: int
    pre_norm: bool
    max_positions: int  # longest sequence the position table allows, start token included
    # BERT-style LM heads transform before the vocabulary projection: LayerNorm(act(dense(x)))
    head_transform: Linear | None = None
    head_act: str | None = None
    head_ln: LayerNorm | None = None
    emb_proj: Linear | None = None  # ELECTRA: embedding width -> hidden width, after the embedding LayerNorm

    @property
    def hidden(self) -> int:
        return int(self.emb_proj.w.shape[1]) if self.emb_proj is not None else int(self.token_emb.shape[1])

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def vocab(self) -> int:
        return int(self.lm_head.w.shape[1])

    def step_params(self) -> int:
        """Weights one decoder step reads: every matrix but the embedding tables (one row each)."""
        total = int(self.lm_head.w.size)
        for m in (self.head_transform, self.emb_proj):
            total += int(m.w.size) if m is not None else 0
        for layer in self.layers:
            for m in (layer.self_attn.q, layer.self_attn.k, layer.self_attn.v, layer.self_attn.o,
                      layer.cross_attn.q, layer.cross_attn.o, layer.fc1, layer.fc2):
                total += int(m.w.size) + (int(m.b.size) if m.b is not None else 0)
        return total


@dataclass
class Conv:
    """A 2-D convolution: weight [out, in / groups, k, k], symmetric padding."""

    w: Array
    b: Array | None
    stride: int = 1
    padding: int = 0
    groups: int = 1


@dataclass
class DavitBlock:
    """Half of a DaViT block: x + dwconv(x), then pre-norm attention, x + dwconv(x), pre-norm MLP.

    kind "window": multi-head self-attention within `window` x `window` windows (zero-padded at the
    right and bottom). kind "channel": attention between the channels of each of `heads` groups, over
    all tokens (q carries its 1 / sqrt(tokens) scaling, so the image size is fixed per bundle)."""

    kind: str
    conv1: Conv
    ln_attn: LayerNorm
    attn: Attention
    conv2: Conv
    ln_mlp: LayerNorm
    fc1: Linear
    fc2: Linear
    act: str
    heads: int  # window: attention heads; channel: groups
    window: int = 0


@dataclass
class DavitStage:
    embed: Conv  # the strided patch convolution that opens the stage
    embed_ln: LayerNorm
    embed_pre_norm: bool  # LayerNorm before the convolution (over its input channels), else after
    grid: tuple[int, int]  # token rows x columns after the convolution
    blocks: list[DavitBlock]


@dataclass
class Florence2Encoder:
    """Florence-2's encoder side: DaViT + projector make the image's tokens, which go first in the
    sequence the BART encoder reads (then the prompt's tokens, an input of the graph)."""

    stages: list[DavitStage]
    image_pos: Array  # [rows * cols, channels]: the projector's 2-D learned + 1-D cosine embeddings, summed
    projection: Linear  # channels -> d_model, no bias
    proj_ln: LayerNorm
    token_emb: Array  # [vocab, d_model], embedding scale included: the prompt's tokens
    pos_table: Array  # BART's learned positions; position p is row p + pos_offset
    pos_offset: int
    emb_ln: LayerNorm
    layers: list[EncoderLayer]  # BART encoder layers (post-norm)
    num_heads: int
    image_hw: tuple[int, int]
    channels: int
    max_positions: int  # image and prompt tokens the position table allows
    to_decoder: Linear | None = None

    @property
    def hidden(self) -> int:
        return int(self.token_emb.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        return self.stages[-1].grid

    @property
    def prefix_count(self) -> int:
        return 1  # the projector's mean-pooled token comes first

    @property
    def patch(self) -> int:
        """Pixels per token side of the first stage (its patch convolution's stride)."""
        return self.stages[0].embed.stride

    @property
    def seq_len(self) -> int:
        """The image's tokens (the encoder's sequence then goes on with the prompt's)."""
        return self.prefix_count + self.grid[0] * self.grid[1]

    @property
    def cross_seq(self) -> str:
        return "enc_seq"  # image + prompt tokens: symbolic

    def flops(self, dec: "Decoder", prompt_tokens: int = 12) -> int:
        """Multiply-add FLOPs (x2) of one image with a `prompt_tokens`-token prompt, cross K/V included."""
        total = 0
        for stage in self.stages:
            tokens = stage.grid[0] * stage.grid[1]
            total += 2 * tokens * int(stage.embed.w.size)
            for b in stage.blocks:
                c = int(b.fc1.w.shape[0])
                mats = (b.attn.q, b.attn.k, b.attn.v, b.attn.o, b.fc1, b.fc2)
                total += 2 * tokens * sum(int(m.w.size) for m in mats) + 2 * 2 * tokens * 9 * c
                span = b.window * b.window if b.kind == "window" else c // b.heads
                total += 2 * 2 * tokens * span * c
        s = self.seq_len + prompt_tokens
        total += 2 * self.seq_len * int(self.projection.w.size)
        for layer in self.layers:
            mats = (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o, layer.fc1, layer.fc2)
            total += 2 * s * sum(int(m.w.size) for m in mats) + 2 * 2 * s * s * self.hidden
        return total + cross_kv_flops(s, dec)
