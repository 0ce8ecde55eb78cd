"""The bundle contract: one typed schema that the exporter writes and the runtime reads.

A bundle is a directory::

    manifest.json          this schema, serialised
    tokenizer.json         a `tokenizers` tokenizer
    <precision>/encoder.onnx   pixels (and, Florence-2, the prompt's ids) -> per-decoder-layer cross-attention K and V
    <precision>/decoder.onnx   one KV-cached decoder step
    <precision>/decoder_attn.onnx   the same step, also emitting cross-attention (optional,
                                    `edgecap export --with-attentions`)

Tensor names live here and nowhere else, so the exporter and the runtime cannot drift apart
(piper types them twice). Loading is strict: unknown or missing keys are named in the error,
the way a config parser should fail (piper's bare `KeyError` is what we avoid).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT = "edgecap-bundle"
FORMAT_VERSION = 3
# Versions 2 and 3 added optional fields only (2: prompts, word bans, the encoder's token grid,
# attention variants; 3: fused graphs, Nougat's stop and clean-ups, decode-only tokenizers, float64
# verification figures, Florence-2), so older bundles still load; an older edgecap refuses a newer
# version by its number rather than misread fields it does not know.
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_FILE = "manifest.json"

# --- tensor names (the graph signatures) -------------------------------------------------
PIXEL_VALUES = "pixel_values"
INPUT_IDS = "input_ids"  # [batch, 1] int64: the token fed at this step
STEP = "step"  # [1] int64: its position == number of tokens already in the self-attention cache
LOGITS = "logits"  # [batch, vocab] float32: next-token logits
# Encoders that read a prompt (Florence-2, Generation.prompt_target "encoder"): [batch, prompt_len] int64,
# the prompt's tokens, which the encoder reads after the image's tokens.
ENCODER_PROMPT_IDS = "prompt_ids"


def cross_key(layer: int) -> str:
    """Cross-attention keys of one decoder layer, stored transposed: [batch, heads, head_dim, enc_seq]."""
    return f"cross_key.{layer}"


def cross_value(layer: int) -> str:
    """Cross-attention values of one decoder layer: [batch, heads, enc_seq, head_dim]."""
    return f"cross_value.{layer}"


def past_key(layer: int) -> str:
    """Self-attention key cache, transposed: [batch, heads, head_dim, cache_len]; slots >= step are ignored."""
    return f"past_key.{layer}"


def past_value(layer: int) -> str:
    """Self-attention value cache: [batch, heads, cache_len, head_dim]; slots >= step are ignored."""
    return f"past_value.{layer}"


def new_key(layer: int) -> str:
    """This step's key, [batch, heads, head_dim, 1]: the runtime writes it into slot `step` of the cache."""
    return f"new_key.{layer}"


def new_value(layer: int) -> str:
    """This step's value, [batch, heads, 1, head_dim]."""
    return f"new_value.{layer}"


def present_key(layer: int) -> str:
    """Fused decoder step only: the key cache after this step, [batch, heads, cache_len, head_dim]. The
    runtime binds it to the same buffer as past_key.i, so the step writes its key in place at `step`."""
    return f"present_key.{layer}"


def present_value(layer: int) -> str:
    """Fused decoder step only: the value cache after this step, bound to past_value.i's buffer."""
    return f"present_value.{layer}"


def cross_attention(layer: int) -> str:
    """Attention-emitting decoder only: one layer's cross-attention probabilities of this step,
    [batch, heads, enc_seq] float32 (each row sums to 1 over the encoder's tokens)."""
    return f"cross_attention.{layer}"


# --- schema --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64"
    shape: list[int | str]  # ints are fixed sizes, strings symbolic dimensions


@dataclass(frozen=True)
class GraphSpec:
    file: str  # relative to the bundle directory
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class FusedGraphs:
    """A precision's graphs written with ONNX Runtime's fused operators (domain com.microsoft:
    GroupQueryAttention, MultiHeadAttention, BiasGelu, FastGelu...; export/fused.py): what
    the CPU backend runs when a bundle has them. Their tensors differ from the plain graphs': keys are
    [batch, heads, positions, head_dim] in the cross K/V and in the cache (not transposed), the cache is
    updated in place (present_key.i/present_value.i bound to the past buffers), and the encoder takes
    one image per run (pixel_values [1, 3, H, W]), which is what makes per-tensor int8 batch-invariant."""

    encoder: GraphSpec
    decoder: GraphSpec
    decoder_attentions: GraphSpec | None = None


@dataclass(frozen=True)
class GraphPair:
    encoder: GraphSpec
    decoder: GraphSpec
    # The decoder step again, with cross_attention.i outputs: loaded only when attention maps are
    # asked for, so the normal step pays nothing for them. None: exported without --with-attentions.
    decoder_attentions: GraphSpec | None = None
    fused: FusedGraphs | None = None  # the same model with fused operators (CPU default when present)


def graph_specs(pair: GraphPair, attentions: bool = True) -> list[GraphSpec]:
    """Every graph of a precision: plain and fused, with or without the attention-emitting steps."""
    out = [pair.encoder, pair.decoder] + ([pair.decoder_attentions] if attentions else [])
    if pair.fused is not None:
        out += [pair.fused.encoder, pair.fused.decoder] + ([pair.fused.decoder_attentions] if attentions else [])
    return [g for g in out if g is not None]


@dataclass(frozen=True)
class Source:
    model: str  # the path or hub id it was exported from
    revision: str | None
    encoder_type: str
    decoder_type: str
    exporter: str  # "edgecap <version>"
    libraries: dict[str, str]  # name -> version of torch, transformers, onnx... at export


@dataclass(frozen=True)
class Architecture:
    encoder_layers: int
    encoder_hidden_size: int
    encoder_heads: int
    encoder_seq_len: int  # tokens the encoder emits (patches + class/distillation tokens)
    decoder_layers: int
    decoder_hidden_size: int
    decoder_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int  # longest decoder sequence the position embeddings allow (incl. start token)
    encoder_flops: int  # per image, cross K/V projection included (for the bench's floor estimate)
    decoder_step_params: int  # weights one decoder step must read (embedding tables excluded)
    # Where the encoder's output tokens sit in the image (for attention maps): `encoder_prefix_tokens`
    # class/distillation tokens first, then a rows x columns grid of patches (Swin: its last stage).
    encoder_grid: list[int] | None = None
    encoder_prefix_tokens: int | None = None
    # The encoder's patch side in pixels: content thinner than this reaches the model as a sliver
    # (the runtime warns, naming the image). None in bundles written before it was recorded.
    encoder_patch_size: int | None = None
    # Florence-2: the encoder's sequence is encoder_seq_len image tokens, then the prompt's tokens
    # (so cross K/V and attentions have a symbolic length; attention maps drop the prompt's part)
    encoder_prompt: bool = False


@dataclass(frozen=True)
class Generation:
    """Defaults for `generate()`-equivalent decoding, read from the model's generation config."""

    decoder_start_token_id: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    max_new_tokens: int
    min_new_tokens: int
    num_beams: int
    length_penalty: float
    early_stopping: bool | str  # True, False or "never", as in transformers
    no_repeat_ngram_size: int
    num_return_sequences: int
    forced_bos_token_id: int | None = None  # forced as the first generated token (mBART-style)
    forced_eos_token_ids: list[int] = field(default_factory=list)  # forced as the last one at max length
    # generate()'s bad_words_ids: token sequences that may never be generated
    bad_words_ids: list[list[int]] = field(default_factory=list)
    # A prompt the model always wants after the start token (e.g. a task token), when its config has one
    prompt_ids: list[int] = field(default_factory=list)
    # generate(decoder_input_ids=...) puts the decoder start token before a prompt, except for Donut
    # checkpoints, whose prompt is the whole decoder input (transformers PR #31470)
    prompt_includes_start: bool = False
    # A stopping rule beyond eos and max_new_tokens (edgecap.stopping.STOPPING_RULES): "nougat", the
    # repetition stop of Nougat's own inference, which Nougat checkpoints are exported with. None: none.
    stopping: str | None = None
    # Clean-up of the decoded text (edgecap.text.POSTPROCESSORS), e.g. "nougat": Nougat's markdown
    # clean-up (NougatTokenizerFast.post_process_generation). None: the text as decoded.
    postprocess: str | None = None
    # Where a prompt goes: "decoder" (after the start token, as generate(decoder_input_ids=...)) or
    # "encoder" (Florence-2: the task prompt is read by the encoder with the image; the decoder starts
    # from the start token alone). With "encoder", prompt_ids is the default prompt's encoder tokens.
    prompt_target: str = "decoder"


@dataclass(frozen=True)
class TaskPrompt:
    """A Florence-2 task token and the question Florence2Processor puts in its place."""

    task: str  # e.g. "<OD>"
    question: str  # e.g. "Locate the objects with category name in the image."; "{input}" marks the task's input
    takes_input: bool  # the text after the task token fills {input} (phrase grounding, region tasks)


@dataclass(frozen=True)
class Florence2Spec:
    """How a Florence-2 bundle turns prompts into encoder tokens and answers into structures, read from
    the checkpoint's Florence2Processor at export (edgecap/florence2.py applies it)."""

    tasks: list[TaskPrompt]  # the processor's order: tasks without input first (the first match wins)
    answer_types: dict[str, str]  # task token -> post-processing type ("ocr", "description_with_bboxes"...)
    default_prompt: str  # the prompt a caption call without one uses (export --prompt; default "<CAPTION>")
    image_tokens: int  # the image's tokens, first in the encoder's sequence (where the processor puts <image>)
    text_prefix: str  # the processor's frame around the question: bos before ...
    text_suffix: str  # ... and eos after it, tokenized with it
    encoder_max_positions: int  # image tokens + prompt tokens may not exceed the encoder's position table
    location_bins: list[int] = field(default_factory=lambda: [1000, 1000])  # <loc_N> bins across width, height
    ocr_pattern: str | None = None  # the post-processor's OCR regex when its config sets one (None: its default)
    ocr_area_threshold: float = 0.0
    banned_grounding_tokens: list[str] = field(default_factory=list)  # phrases phrase grounding drops


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    skip_special_tokens: bool
    clean_up_tokenization_spaces: bool
    # False: rebuilt from a slow tokenizer's vocab.txt (manga-ocr): it decodes as the model's own, but
    # would not encode text the same way, so text prompts are refused (token-id prompts work)
    encodes_text: bool = True


@dataclass(frozen=True)
class Verification:
    """What export measured of one precision.

    max_logit_diff is against PyTorch, teacher-forced along PyTorch's greedy tokens. The agreement
    rates compare greedy captions with `reference` ("pytorch" for fp32, the "fp32" graphs for the
    reduced precisions) on `images` evaluation images.

    Reduced precisions are also measured teacher-forced, along the fp32 graphs' own greedy tokens,
    so that one early flip does not derail the rest of a caption: at each step the fp32 and reduced
    next-token distributions are compared. `decisive_agreement` is the fraction of *decisive* steps
    (fp32's top-1 log-probability beats its top-2 by at least `decisive_margin` nats) where both
    pick the same top token; near-ties are excluded because which way they fall is noise, not
    quantization error. `mean_kl` is KL(fp32 || reduced) in nats, averaged over every step.
    """

    reference: str
    images: int
    max_logit_diff: float
    token_agreement: float  # fraction of generated token positions equal to the reference
    caption_agreement: float  # fraction of whole captions equal
    decisive_agreement: float | None = None
    decisive_steps: int | None = None
    steps: int | None = None
    mean_kl: float | None = None
    decisive_margin: float | None = None
    eval_images: str | None = None  # "user" (--eval-images) or "synthetic" (export's default images)
    # fp32 only, measured when max_logit_diff exceeded the absolute tolerance: over every verified image
    # and step, PyTorch fp32's own max logit error against PyTorch in float64, and the graphs' error
    fp64_pytorch_error: float | None = None
    fp64_error: float | None = None
    fp64_pytorch_rms: float | None = None  # the same as root mean squares over every verified logit: the gate's
    fp64_rms: float | None = None
    verified_steps: int | None = None  # tokens decoded per image at most (export's --verify-steps)
    # fp32 of a bundle with fused graphs: this report is the fused graphs' (what the CPU runs), and this
    # is the plain graphs' (the reference, TensorRT's source), verified against PyTorch the same way
    plain: "Verification | None" = None
    # int8: decoder projections kept in fp32 because int8 alone failed the gate (e.g. ["self.qkv"])
    fp32_parts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    format: str
    format_version: int
    source: Source
    architecture: Architecture
    preprocess: dict[str, Any]  # edgecap.preprocess.PreprocessSpec.to_dict(): validated there
    generation: Generation
    tokenizer: TokenizerSpec
    graphs: dict[str, GraphPair]  # precision -> graphs
    files: dict[str, str]  # relative path -> sha256 of every file but the manifest
    verification: dict[str, Verification] = field(default_factory=dict)
    florence2: Florence2Spec | None = None  # Florence-2 bundles: prompts and answer parsing

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        # Fields added after version 2 are written only when they say something, so a bundle that
        # does not use them reads the same as before they existed (and in runtimes that predate them).
        for where, key, default in _LATE_FIELDS:
            parent = data[where] if where else data
            if parent.get(key) == default:
                del parent[key]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_FILE) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object")
        fmt, version = data.get("format"), data.get("format_version")
        if fmt != FORMAT:
            raise BundleError(f"{where}: not an edgecap bundle manifest (format={fmt!r})")
        if version not in READABLE_VERSIONS:
            raise BundleError(
                f"{where}: bundle format version {version!r}, this edgecap reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-export the model with this edgecap version"
            )
        return _build(cls, data, where)


# (section or "" for the top level, key, default): see Manifest.to_json
_LATE_FIELDS = (("", "florence2", None), ("generation", "prompt_target", "decoder"),
                ("architecture", "encoder_prompt", False))


# --- strict decoding of the dataclasses above --------------------------------------------------


def _build(tp: Any, value: Any, where: str) -> Any:
    """Turn parsed JSON into `tp`, naming the key path of the first thing that does not fit."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected an object")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        required = {
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(value))
        if unknown or missing:
            parts = []
            if missing:
                parts.append("missing key(s) " + ", ".join(missing))
            if unknown:
                parts.append("unknown key(s) " + ", ".join(unknown))
            raise BundleError(f"{where}: " + "; ".join(parts))
        return tp(**{k: _build(hints[k], v, f"{where}:{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _build(arm, value, where)
            except BundleError as exc:
                errors.append(str(exc))
        raise BundleError(f"{where}: unexpected value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise BundleError(f"{where}: expected a list")
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected an object")
        return {k: _build(item, v, f"{where}:{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise BundleError(f"{where}: expected null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BundleError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BundleError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise BundleError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise BundleError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"manifest schema has an unsupported type {tp!r}")  # a bug in this module


def safe_relative_path(bundle_dir: Path, rel: str, where: str) -> Path:
    """Resolve a manifest path, refusing anything that could leave the bundle directory."""
    if not rel or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise BundleError(f"{where}: path {rel!r} must be relative to the bundle directory")
    parts = rel.replace("\\", "/").split("/")
    if any(p in ("..", "") for p in parts):
        raise BundleError(f"{where}: path {rel!r} must stay inside the bundle directory (no '..')")
    root = bundle_dir.resolve()
    full = (root / rel).resolve()
    if root != full and root not in full.parents:
        raise BundleError(f"{where}: path {rel!r} leaves the bundle directory")
    return full
