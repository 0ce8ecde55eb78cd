"""A bundle's numbers checked against each other, its graphs' declared shapes and its tokenizer.

The schema (manifest.py) says what type each value has; this says whether the values make one
model: token ids inside the vocabulary, heads x head size = width, a cache tensor per decoder layer,
logits as wide as the vocabulary, limits a machine can hold. Everything here runs at load, so a
tampered or hand-edited bundle fails with a `BundleError` naming the field before the first caption,
never with ONNX Runtime's error (or a wrong caption) at it.
"""

from __future__ import annotations

import math
import re

import numpy as np

from . import manifest as mf
from .errors import BundleError

# Bounds of what a bundle may declare: far beyond any real model, far below what would make an
# allocation from the numbers alone exhaust a machine.
LIMITS = {
    "layers": 1024,
    "heads": 4096,
    "head_dim": 4096,
    "hidden_size": 1 << 17,
    "vocab_size": 10_000_000,
    "max_positions": 1 << 20,
    "encoder_seq_len": 1 << 24,
}
MAX_JSON_BYTES = {"manifest": 16 << 20, "tokenizer": 256 << 20}
MAX_JSON_DEPTH = 64  # a manifest is 6 deep, a tokenizer.json about 8; Python's parser recurses per level

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def check_json_bounds(data: bytes, kind: str, where: str) -> None:
    """Refuse JSON too large or too deeply nested to parse safely, before parsing it."""
    limit = MAX_JSON_BYTES[kind]
    if len(data) > limit:
        raise BundleError(f"{where}: {len(data):,} bytes, more than a {kind} may have ({limit:,})")
    brackets = np.frombuffer(_STRING.sub(b"", data).translate(None, delete=bytes(
        c for c in range(256) if c not in b"[]{}")), dtype=np.uint8)
    if brackets.size:
        depth = np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)).max()
        if depth > MAX_JSON_DEPTH:
            raise BundleError(f"{where}: JSON nested {int(depth)} levels deep, more than {MAX_JSON_DEPTH}")


def _fail(where: str, field: str, problem: str) -> None:
    raise BundleError(f"{where}: {field}: {problem}")


def _bounded(where: str, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        _fail(where, field, f"{value} is outside [{low}, {high}]")


def check_manifest(man: mf.Manifest, where: str) -> None:
    """The manifest's numbers against each other (BundleError naming the first bad field)."""
    arch, gen = man.architecture, man.generation
    for name in ("encoder_layers", "decoder_layers"):
        _bounded(where, f"architecture.{name}", getattr(arch, name), 1, LIMITS["layers"])
    for name in ("encoder_heads", "decoder_heads"):
        _bounded(where, f"architecture.{name}", getattr(arch, name), 1, LIMITS["heads"])
    _bounded(where, "architecture.head_dim", arch.head_dim, 1, LIMITS["head_dim"])
    for name in ("encoder_hidden_size", "decoder_hidden_size"):
        _bounded(where, f"architecture.{name}", getattr(arch, name), 1, LIMITS["hidden_size"])
    _bounded(where, "architecture.vocab_size", arch.vocab_size, 1, LIMITS["vocab_size"])
    _bounded(where, "architecture.max_positions", arch.max_positions, 1, LIMITS["max_positions"])
    _bounded(where, "architecture.encoder_seq_len", arch.encoder_seq_len, 1, LIMITS["encoder_seq_len"])
    for name in ("encoder_flops", "decoder_step_params"):
        if getattr(arch, name) < 0:
            _fail(where, f"architecture.{name}", f"{getattr(arch, name)} is negative")
    if arch.decoder_heads * arch.head_dim != arch.decoder_hidden_size:
        _fail(where, "architecture.head_dim", f"decoder_heads {arch.decoder_heads} x head_dim {arch.head_dim} "
              f"is not decoder_hidden_size {arch.decoder_hidden_size}")
    if arch.encoder_grid is not None:
        if len(arch.encoder_grid) != 2 or min(arch.encoder_grid) < 1:
            _fail(where, "architecture.encoder_grid", f"{arch.encoder_grid} is not [rows, columns] of positive sizes")
        prefix = arch.encoder_prefix_tokens or 0
        if prefix < 0 or prefix + arch.encoder_grid[0] * arch.encoder_grid[1] != arch.encoder_seq_len:
            _fail(where, "architecture.encoder_grid", f"{prefix} prefix tokens + a {arch.encoder_grid} grid is not "
                  f"encoder_seq_len {arch.encoder_seq_len}")

    def token(field: str, value: int | None) -> None:
        if value is not None and not 0 <= value < arch.vocab_size:
            _fail(where, f"generation.{field}", f"token id {value} is outside the vocabulary [0, {arch.vocab_size})")

    for field in ("decoder_start_token_id", "bos_token_id", "pad_token_id", "forced_bos_token_id"):
        token(field, getattr(gen, field))
    for field in ("eos_token_ids", "forced_eos_token_ids", "prompt_ids"):
        for value in getattr(gen, field):
            token(field, value)
    for seq in gen.bad_words_ids:
        if not seq:
            _fail(where, "generation.bad_words_ids", "holds an empty sequence")
        for value in seq:
            token("bad_words_ids", value)
    _bounded(where, "generation.max_new_tokens", gen.max_new_tokens, 1, arch.max_positions)
    _bounded(where, "generation.min_new_tokens", gen.min_new_tokens, 0, arch.max_positions)
    _bounded(where, "generation.num_beams", gen.num_beams, 1, arch.vocab_size)
    _bounded(where, "generation.num_return_sequences", gen.num_return_sequences, 1, gen.num_beams)
    _bounded(where, "generation.no_repeat_ngram_size", gen.no_repeat_ngram_size, 0, arch.max_positions)
    if not math.isfinite(gen.length_penalty):
        _fail(where, "generation.length_penalty", f"{gen.length_penalty} is not a finite number")
    if gen.early_stopping not in (True, False, "never"):
        _fail(where, "generation.early_stopping", f"{gen.early_stopping!r} is not true, false or \"never\"")
    _check_prompt_target(man, where)
    for precision, pair in man.graphs.items():
        forms = [("", pair, False)] + ([("fused.", pair.fused, True)] if pair.fused is not None else [])
        for prefix, graphs, fused in forms:
            for role, graph in (("encoder", graphs.encoder), ("decoder", graphs.decoder),
                                ("decoder_attentions", graphs.decoder_attentions)):
                if graph is not None:
                    check_graph_spec(graph, role, arch, f"{where}: graphs.{precision}.{prefix}{role}", fused)


def _check_prompt_target(man: mf.Manifest, where: str) -> None:
    """An encoder that reads the prompt (Florence-2) has its Florence-2 section, and the section fits."""
    from .florence2 import ANSWER_TYPES

    arch, gen, spec = man.architecture, man.generation, man.florence2
    if gen.prompt_target not in ("decoder", "encoder"):
        _fail(where, "generation.prompt_target", f"{gen.prompt_target!r} is not \"decoder\" or \"encoder\"")
    if (gen.prompt_target == "encoder") != arch.encoder_prompt or (spec is not None) != arch.encoder_prompt:
        _fail(where, "generation.prompt_target", f"{gen.prompt_target!r} with architecture.encoder_prompt "
              f"{arch.encoder_prompt} and {'a' if spec is not None else 'no'} florence2 section: they go together")
    if spec is None:
        return
    if spec.image_tokens != arch.encoder_seq_len:
        _fail(where, "florence2.image_tokens", f"{spec.image_tokens} is not architecture.encoder_seq_len "
              f"{arch.encoder_seq_len}")
    _bounded(where, "florence2.encoder_max_positions", spec.encoder_max_positions, spec.image_tokens + 1,
             LIMITS["max_positions"])
    if len(spec.location_bins) != 2 or not all(1 <= b <= LIMITS["max_positions"] for b in spec.location_bins):
        _fail(where, "florence2.location_bins", f"{spec.location_bins} is not [width bins, height bins]")
    unknown = sorted({t for t in spec.answer_types.values() if t not in ANSWER_TYPES})
    if unknown:
        _fail(where, "florence2.answer_types", f"unknown answer type(s) {', '.join(unknown)}")
    if not math.isfinite(spec.ocr_area_threshold):
        _fail(where, "florence2.ocr_area_threshold", f"{spec.ocr_area_threshold} is not a finite number")
    if spec.ocr_pattern is not None:
        try:
            re.compile(spec.ocr_pattern)
        except re.error as exc:
            _fail(where, "florence2.ocr_pattern", f"not a regular expression ({exc})")


_LAYER_TENSOR = re.compile(
    r"^(cross_key|cross_value|past_key|past_value|new_key|new_value|present_key|present_value|cross_attention)\.(\d+)$")


def _expected_dims(name: str, arch: mf.Architecture, fused: bool = False) -> list[int | None] | None:
    """Fixed sizes a tensor must have (None: any size, symbolic), or None for a name we do not know.
    Fused graphs keep keys as values are ([.., positions, head_dim]) and update the cache in place."""
    h, d, s = arch.decoder_heads, arch.head_dim, arch.encoder_seq_len
    fixed = {
        mf.INPUT_IDS: [None, 1], mf.STEP: [1], mf.LOGITS: [None, arch.vocab_size],
        mf.PIXEL_VALUES: [None, None, None, None], mf.ENCODER_PROMPT_IDS: [None, None],
    }
    if name in fixed:
        return fixed[name]
    match = _LAYER_TENSOR.match(name)
    if match is None:
        return None
    kind = match.group(1)
    if fused and kind in ("cross_key", "past_key", "present_key", "present_value"):
        return {"cross_key": [None, h, s, d]}.get(kind, [None, h, None, d])
    return {
        "cross_key": [None, h, d, s], "cross_value": [None, h, s, d],
        "past_key": [None, h, d, None], "past_value": [None, h, None, d],
        "new_key": [None, h, d, 1], "new_value": [None, h, 1, d], "cross_attention": [None, h, s],
    }[kind]


def check_graph_spec(graph: mf.GraphSpec, role: str, arch: mf.Architecture, where: str, fused: bool = False) -> None:
    """A graph's declared tensors against the architecture: names, one per decoder layer, sizes."""
    layers: dict[str, set[int]] = {}
    for kind, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        for t in tensors:
            want = _expected_dims(t.name, arch, fused)
            if want is None:
                _fail(where, f"{kind} {t.name}", "is not a tensor edgecap graphs have")
            if len(t.shape) != len(want):
                _fail(where, f"{kind} {t.name}", f"has {len(t.shape)} dimensions, expected {len(want)}")
            for axis, (got, expected) in enumerate(zip(t.shape, want)):
                if isinstance(got, int) and (got < 1 or (expected is not None and got != expected)):
                    _fail(where, f"{kind} {t.name}", f"dimension {axis} is {got}, expected "
                          f"{expected if expected is not None else 'a positive size'} (from the architecture)")
            match = _LAYER_TENSOR.match(t.name)
            if match is not None:
                layers.setdefault(match.group(1), set()).add(int(match.group(2)))
    expected = set(range(arch.decoder_layers))
    for kind, seen in layers.items():
        if seen != expected:
            _fail(where, kind, f"the graph has layers {_span(seen)}, the decoder has {arch.decoder_layers}")
    names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    required = [mf.PIXEL_VALUES] if role == "encoder" else [mf.INPUT_IDS, mf.STEP, mf.LOGITS]
    step_outputs = ["present_key", "present_value"] if fused else ["new_key", "new_value"]
    if role == "encoder" and arch.encoder_prompt:
        required.append(mf.ENCODER_PROMPT_IDS)
    required += ["cross_key", "cross_value"] if role == "encoder" else ["past_key", "past_value", *step_outputs,
                                                                         "cross_key", "cross_value"]
    missing = [n for n in required if n not in names and n not in layers]
    if missing:
        _fail(where, "tensors", f"missing {', '.join(missing)}")


def _span(seen: set[int]) -> str:
    return f"{min(seen)}..{max(seen)} ({len(seen)})" if seen else "none"


def check_tokenizer(tokenizer, man: mf.Manifest, where: str) -> None:
    """The tokenizer against the model: the ids the generation config names exist in it, and its own
    vocabulary (added tokens aside) fits the decoder's."""
    arch, gen = man.architecture, man.generation
    base = tokenizer.get_vocab_size(with_added_tokens=False)
    if base > arch.vocab_size:
        raise BundleError(f"{where}: has {base:,} tokens but the decoder's vocabulary (architecture.vocab_size) "
                          f"is {arch.vocab_size:,}: tokenizer and model do not belong together")
    named = [("decoder_start_token_id", gen.decoder_start_token_id), ("pad_token_id", gen.pad_token_id)]
    named += [("eos_token_ids", t) for t in gen.eos_token_ids]
    for field, value in named:
        if value is not None and tokenizer.id_to_token(value) is None:
            raise BundleError(f"{where}: has no token {value} (generation.{field} in the manifest)")
