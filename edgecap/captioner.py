"""The embedded API: `Captioner(bundle).caption(images)`.

Each stage is public and usable alone: `preprocess` -> `encode` -> `decode` -> `detokenize`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import decoding, florence2
from .backends import MEMORY_MODES, OrtEncoder, OrtStepDecoder, SessionOptions, create_session, resolve_backend
from .bundle import Bundle, load_bundle
from .bundlecheck import check_tokenizer
from .errors import BundleError, OptionsError
from . import manifest as mf
from .manifest import ENCODER_PROMPT_IDS, PIXEL_VALUES
from .options import OPTION_NAMES, GenerationOptions, ResolvedOptions
from .preprocess import ImageSource, PreprocessSpec, image_list, preprocess, preprocess_sized
from .resources import available_memory, decoding_state_bytes
from .text import Detokenizer, postprocess_text

log = logging.getLogger(__name__)

# Preferred precision per backend when the caller does not choose: fastest first.
_PRECISION_PREFERENCE = {"cpu": ("int8", "fp32", "fp16", "int4")}


@dataclass(frozen=True)
class Caption:
    text: str
    token_ids: tuple[int, ...]  # without the decoder start token, up to and including eos, no padding
    score: float  # beam search: transformers' sequence score; greedy: sum of token log-probs
    alternatives: tuple["Caption", ...] = field(default=())  # further hypotheses (num_return_sequences > 1)
    # One per token_ids entry: the token's log-probability after the logits processors, as
    # transformers' compute_transition_scores(sequences, scores, beam_indices) gives it (greedy:
    # normalize_logits=True); for beam search, from the beam that chose it.
    token_scores: tuple[float, ...] = field(default=())
    # caption(output_attentions=True) only: float32 [tokens, encoder_seq] (heads averaged) or
    # [tokens, heads, encoder_seq], the cross-attention the decoder used when it chose each token.
    # `edgecap.attention.to_grid` maps it onto the image.
    cross_attentions: np.ndarray | None = field(default=None, repr=False, compare=False)
    # stopping="nougat" only: "fail" when the output repeated itself (Nougat's [MISSING_PAGE_FAIL]),
    # "empty" when it repeated from the start or its clean-up left nothing ([MISSING_PAGE_EMPTY]);
    # `text` is then that mark (edgecap.nougat.page_mark), `token_ids` what was generated.
    missing_page: str | None = None
    # The answer as a structure, for bundles with a parser (None otherwise): Florence-2's
    # `processor.post_process_generation(...)` ({task: answer}, locations in the original image's
    # pixels; None when the prompt came as token ids), Donut's token2json.
    parsed: Any = field(default=None, compare=False)

    @property
    def confidence(self) -> float:
        """exp(mean of token_scores): the geometric mean of the chosen tokens' probabilities, in
        (0, 1]; comparable across lengths (a sum is not), 0.0 for an empty caption. One unsure
        character in a long OCR line moves it little: look at `token_scores` for those."""
        return decoding.confidence(self.token_scores)


def _preprocess_spec(bundle: Bundle, precision: str) -> PreprocessSpec:
    """The bundle's preprocessing, checked against the encoder graph's input size."""
    where = f"{bundle.path / 'manifest.json'}: preprocess"
    try:
        spec = PreprocessSpec.from_dict(bundle.manifest.preprocess)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where}: {exc}") from None
    pixels = next((t for t in bundle.graphs(precision).encoder.inputs if t.name == PIXEL_VALUES), None)
    try:
        out_hw = spec.output_hw
    except ValueError:  # a size that depends on the image: nothing to compare
        return spec
    if pixels is not None and all(isinstance(d, int) for d in pixels.shape[2:]) and tuple(pixels.shape[2:]) != out_hw:
        raise BundleError(f"{where}: makes {out_hw[0]}x{out_hw[1]} images but the {precision} encoder takes "
                          f"{pixels.shape[2]}x{pixels.shape[3]}")
    return spec


def default_bundle_dir() -> Path | None:
    """The demo bundle shipped with edgecap (package data), or None if this install has none."""
    here = Path(__file__).resolve().parent / "data" / "demo-bundle"
    return here if (here / "manifest.json").is_file() else None


class DecoderStatePool:
    """Decoder states for concurrent calls: each call takes one, uses it alone, and gives it back.

    A state is what a caption writes while it decodes (the KV cache buffers, the IO binding, the
    logits buffer); the ONNX Runtime session it runs is shared, as ONNX Runtime intends (`Run` is
    thread-safe; one session per model, not per thread). A call takes a free state or makes a new one,
    so N threads hold at most N states, each sized for its last caption; with `limit` (GPU backends:
    their one device-resident cache) callers wait for a free one instead.
    """

    def __init__(self, factory: Callable[[], object], limit: int | None = None) -> None:
        self._factory = factory
        self._free: list[object] = []
        self._made = 0
        self._limit = limit
        self._ready = threading.Condition()

    @contextmanager
    def take(self) -> Iterator:
        with self._ready:
            while not self._free and self._limit is not None and self._made >= self._limit:
                self._ready.wait()
            state = self._free.pop() if self._free else None
            if state is None:
                self._made += 1
        if state is None:
            try:
                state = self._factory()
            except BaseException:
                with self._ready:
                    self._made -= 1
                    self._ready.notify()
                raise
        try:
            yield state
        finally:
            with self._ready:
                self._free.append(state)
                self._ready.notify()

    @property
    def size(self) -> int:
        """States made so far (the most calls that ran at once)."""
        return self._made


class Captioner:
    """Loads a bundle once and captions images with it.

    Safe to share between threads: every call decodes with a decoder state of its own (KV cache,
    IO binding) taken from a pool, over ONNX Runtime sessions that all calls share (README,
    "Concurrency and safety"). GPU backends keep one device-resident cache, so their calls take
    turns.

    Args:
        bundle_dir: bundle directory (from `edgecap export`); None = the bundled demo model.
        precision: which graphs to run ("fp32", "int8", ...); None = the best this bundle has for the backend.
        backend: "cpu", "cuda", "ort-tensorrt", "tensorrt" or "auto" (see docs/gpu.md).
        threads: ONNX Runtime intra-op threads; None = all cores.
        verify_checksums: hash the graphs at load (a second or so for large models).
        fused: on the cpu backend, run the bundle's fused graphs (ONNX Runtime's fused operators,
            manifest.FusedGraphs) when it has them; None = yes, False = the plain graphs.
        memory: how the cpu backend's sessions allocate intermediate tensors (backends.MEMORY_MODES):
            "arena" (ONNX Runtime's default: keeps the largest run's memory for the next),
            "arena-no-pattern", or "no-arena" (returned after each run: for page-sized images where
            several sessions live side by side, as export's verification does).
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike | None = None,
        precision: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        verify_checksums: bool = True,
        fused: bool | None = None,
        memory: str = "arena",
    ) -> None:
        t0 = time.perf_counter()
        self._fused_asked = fused
        if memory not in MEMORY_MODES:
            raise OptionsError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        self._memory = memory
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096):
            raise OptionsError(f"threads must be an integer from 1 to 4096 (or None: all cores), got {threads!r}")
        if bundle_dir is None:
            bundle_dir = default_bundle_dir()
            if bundle_dir is None:
                raise BundleError("no bundle given and no demo bundle installed; pass a bundle directory")
        self.backend = resolve_backend(backend)
        bundle = load_bundle(bundle_dir, precision=precision, verify_checksums=False)
        if (backend or "auto") == "auto":
            self.backend = resolve_backend("auto", bundle, precision)
        if bundle.manifest.architecture.encoder_prompt and self.backend != "cpu":
            if (backend or "auto") != "auto":  # the GPU backends feed the encoder pixels only
                raise OptionsError(f"{bundle.path}: its encoder reads a prompt (Florence-2), which runs on the cpu "
                                   f"backend only, not {self.backend}; use --backend cpu")
            self.backend = "cpu"
        self.precision = precision or self._pick_precision(bundle)
        self.bundle = load_bundle(bundle_dir, precision=self.precision, verify_checksums=verify_checksums)
        man = self.bundle.manifest
        self.preprocess_spec = _preprocess_spec(self.bundle, self.precision)
        if self.backend == "cpu":
            self._encoder, self._decoders = self._cpu_models(threads)
        else:  # device-resident encoder outputs and KV cache (edgecap/gpu, docs/gpu.md)
            from .gpu import create_models

            try:
                self._encoder, decoder = create_models(self.bundle, self.precision, self.backend)
                self._decoders = DecoderStatePool(lambda: decoder, limit=1)
            except Exception as exc:
                if (backend or "auto") != "auto":
                    raise
                # "auto" promised the best *working* backend: a GPU path that fails to start is a
                # warning and a CPU captioner, not a dead application.
                log.warning("backend %s failed to start (%s); falling back to cpu", self.backend, exc)
                self.backend = "cpu"
                self.precision = precision or self._pick_precision(self.bundle)
                self.bundle = load_bundle(bundle_dir, precision=self.precision, verify_checksums=verify_checksums)
                self._encoder, self._decoders = self._cpu_models(threads)
        self.detokenize = Detokenizer(self.bundle.file(man.tokenizer.file), man.tokenizer)
        check_tokenizer(self.detokenize.tokenizer, man, str(self.bundle.file(man.tokenizer.file)))
        self._threads, self._verify_checksums = threads, verify_checksums
        self._attention_decoders: DecoderStatePool | None = None  # loaded on the first output_attentions=True
        self._attention_lock = threading.Lock()
        self._encode_lock = None if self.backend == "cpu" else threading.Lock()
        self.load_seconds = time.perf_counter() - t0
        log.info("loaded %s (%s, %s) in %.2fs", self.bundle.path, self.precision, self.backend, self.load_seconds)

    @property
    def fused(self) -> bool:
        """Whether this captioner runs the bundle's fused graphs (cpu backend, bundle has them, not refused)."""
        return (self.backend == "cpu" and self._fused_asked is not False
                and self.bundle.graphs(self.precision).fused is not None)

    def _graph_set(self) -> mf.GraphPair | mf.FusedGraphs:
        pair = self.bundle.graphs(self.precision)
        if self._fused_asked and pair.fused is None:
            raise OptionsError(f"{self.bundle.path}: its {self.precision} graphs have no fused form (re-export with "
                               "this edgecap; fp16 and int8-qdq are plain only); use fused=None or False")
        return pair.fused if self.fused else pair

    def _cpu_models(self, threads: int | None) -> tuple[OrtEncoder, DecoderStatePool]:
        graphs = self._graph_set()
        encoder_options = SessionOptions(threads, spin=False, memory=self._memory)
        encoder = OrtEncoder(create_session(self.bundle, graphs.encoder, "cpu", encoder_options), graphs.encoder)
        session = create_session(self.bundle, graphs.decoder, "cpu", SessionOptions(threads, memory=self._memory))
        arch = self.bundle.manifest.architecture
        return encoder, DecoderStatePool(lambda: OrtStepDecoder(session, arch, graphs.decoder))

    @contextmanager
    def step_decoder(self) -> Iterator[decoding.StepModel]:
        """A decoder state of this captioner's own, for driving the step graph directly (export's
        verification does): `set_encoded`, `begin`, `step`, `reorder`. Yours alone until the block ends."""
        with self._decoders.take() as decoder:
            yield decoder

    def _pick_precision(self, bundle: Bundle) -> str:
        prefs = _PRECISION_PREFERENCE.get(self.backend)
        if prefs is None:
            from .gpu import precision_preference

            prefs = precision_preference(bundle, self.backend)
        for p in prefs:
            if p in bundle.manifest.graphs:
                return p
        return bundle.precisions[0]

    def __repr__(self) -> str:
        # what a notebook or a log line needs to tell captioners apart; getattr: a half-built one too
        bundle = getattr(self, "bundle", None)
        src = bundle.manifest.source if bundle is not None else None
        families = f"{src.encoder_type}+{src.decoder_type}" if src is not None else None
        return (f"Captioner(bundle={str(bundle.path) if bundle is not None else None!r}, "
                f"precision={getattr(self, 'precision', None)!r}, backend={getattr(self, 'backend', None)!r}, "
                f"families={families!r})")

    @property
    def generation_defaults(self):
        return self.bundle.manifest.generation

    # --- stages -----------------------------------------------------------------------------

    def preprocess(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Images -> pixel_values [B, 3, H, W] float32, exactly as the HF image processor would
        (a document whose content would reach the encoder thinner than a patch is logged as a warning)."""
        return preprocess(images, self.preprocess_spec, self.bundle.manifest.architecture.encoder_patch_size)

    def encode(self, pixel_values: np.ndarray, options: GenerationOptions | None = None) -> dict[str, np.ndarray]:
        """Run the encoder: per decoder layer, the cross-attention K and V of each image. `options`
        matter only to an encoder that reads the prompt (Florence-2): their prompt, else the bundle's."""
        feeds = self.encoder_inputs(pixel_values, options)
        if len(feeds) > 1:  # the prompt too: the cpu backend's OrtEncoder (checked at load)
            return self._encoder.run(feeds)
        pixels = feeds[PIXEL_VALUES]
        if self._encode_lock is None:  # ONNX Runtime CPU sessions run concurrent calls safely
            return self._encoder(pixels)
        with self._encode_lock:  # a TensorRT encoder reuses its input buffer and execution context
            return self._encoder(pixels)

    def encoder_inputs(self, pixel_values: np.ndarray, options: GenerationOptions | None = None) -> dict[str, np.ndarray]:
        """The encoder graph's inputs: the pixels, and (Florence-2) the prompt's encoder tokens, one
        row per image (every image of a call gets the same prompt, so no row needs padding)."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        feeds = {PIXEL_VALUES: pixels}
        if self.generation_defaults.prompt_target == "encoder":
            ids = np.asarray(self.resolve_options(options).encoder_input_ids, dtype=np.int64)
            feeds[ENCODER_PROMPT_IDS] = np.ascontiguousarray(np.broadcast_to(ids, (len(pixels), len(ids))))
        return feeds

    def decode(
        self,
        encoded: dict[str, np.ndarray],
        options: GenerationOptions | None = None,
        output_attentions: bool = False,
        attention_layer: int = -1,
        attention_heads: str = "mean",
    ) -> list[list[decoding.Hypothesis]]:
        """Generate token ids for encoded images: a list (per image) of hypotheses, best first
        (with their cross-attentions when `output_attentions`, see `caption`)."""
        opts = self.resolve_options(options)
        batch = next(iter(encoded.values())).shape[0]
        self.check_memory(batch, opts)
        pool = self._attention_model(attention_layer, attention_heads) if output_attentions else self._decoders
        with pool.take() as decoder:
            if output_attentions:
                decoder.attention_layer = attention_layer % self.bundle.manifest.architecture.decoder_layers
                decoder.attention_heads = attention_heads
            decoder.set_encoded(encoded)
            return decoding.decode(decoder, batch, opts, attentions=output_attentions)

    def _attention_model(self, layer: int, heads: str) -> DecoderStatePool:
        """The attention-emitting decoder step's states, loaded on first use (the normal step stays as
        it is); checks that `layer` and `heads` ("mean" or "all") can be asked of it."""
        layers = self.bundle.manifest.architecture.decoder_layers
        if heads not in ("mean", "all"):
            raise OptionsError(f"attention_heads must be 'mean' or 'all', got {heads!r}")
        if isinstance(layer, bool) or not isinstance(layer, int) or not -layers <= layer < layers:
            raise OptionsError(f"attention_layer must be an integer in [{-layers}, {layers - 1}] "
                               f"(this decoder has {layers} layers), got {layer!r}")
        with self._attention_lock:  # two threads asking first must not load it twice
            if self._attention_decoders is None:
                self._attention_decoders = self._load_attention_model()
        return self._attention_decoders

    def _load_attention_model(self) -> DecoderStatePool:
        if self.backend != "cpu":
            raise OptionsError(f"attention maps run on the cpu backend only, not {self.backend}; "
                               "use Captioner(..., backend='cpu') (--backend cpu)")
        graph = self._graph_set().decoder_attentions
        if graph is None:
            raise OptionsError(
                f"{self.bundle.path}: its {self.precision} graphs have no attention-emitting decoder step; "
                "re-export the model with `edgecap export MODEL OUTDIR --with-attentions` "
                "(ExportOptions(with_attentions=True)) to get cross-attention maps")
        if self._verify_checksums:
            self.bundle.verify_files([graph.file])  # loaded late: checked late
        session = create_session(self.bundle, graph, "cpu", SessionOptions(self._threads, memory=self._memory))
        arch = self.bundle.manifest.architecture
        return DecoderStatePool(lambda: OrtStepDecoder(session, arch, graph))

    def resolve_options(self, options: GenerationOptions | None = None) -> ResolvedOptions:
        """Options with the bundle's defaults filled in, checked against this model (OptionsError,
        a ValueError, names what is wrong)."""
        arch, spec = self.bundle.manifest.architecture, self.bundle.manifest.florence2
        def encode(text: str) -> list[int]:
            if spec is None:
                return self.encode_text(text)
            return florence2.encoder_prompt_ids(text, spec, self.encode_text)  # a task prompt: its question
        opts = (options or GenerationOptions()).resolve(
            self.generation_defaults, encode=encode, max_positions=arch.max_positions
        )
        bad = [t for seq in (*opts.bad_words_ids, opts.decoder_input_ids, opts.encoder_input_ids) for t in seq
               if t >= arch.vocab_size]
        if bad:
            raise OptionsError(f"token id(s) {sorted(set(bad))[:5]} are beyond this model's vocabulary of {arch.vocab_size}")
        if spec is not None and arch.encoder_seq_len + len(opts.encoder_input_ids) > spec.encoder_max_positions:
            raise OptionsError(f"the prompt is {len(opts.encoder_input_ids)} tokens; after the image's "
                               f"{arch.encoder_seq_len} the encoder has room for "
                               f"{spec.encoder_max_positions - arch.encoder_seq_len}")
        if opts.num_beams > arch.vocab_size:
            raise OptionsError(f"num_beams {opts.num_beams} is more than this model's vocabulary of {arch.vocab_size} "
                               "tokens (each beam needs a distinct token to continue)")
        return opts

    def check_memory(self, images: int, opts: ResolvedOptions) -> None:
        """Refuse (OptionsError, before any allocation) a decode whose state would not fit in the memory
        this machine has available: images x num_beams rows, each with its KV cache and scores."""
        need = decoding_state_bytes(self.bundle.manifest.architecture, images * opts.num_beams,
                                    opts.prompt_len + opts.max_new_tokens, self.precision == "fp16")
        available = available_memory()
        if available is not None and need > 0.8 * available:
            raise OptionsError(
                f"num_beams {opts.num_beams} x {images} image(s) with max_new_tokens {opts.max_new_tokens} needs about "
                f"{need / 1e9:.1f} GB of decoder state, more than this machine can spare ({available / 1e9:.1f} GB "
                "available); lower num_beams, max_new_tokens or the batch size")

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens, padding or truncation (how a text prompt is fed);
        `OptionsError` when the tokenizer does not know a piece of it (it would be fed as unknown)."""
        if not self.bundle.manifest.tokenizer.encodes_text:
            raise OptionsError(f"{self.bundle.path}: this bundle's tokenizer was rebuilt from the checkpoint's vocab.txt "
                               "(a slow tokenizer with no fast class); it decodes as the model's own but cannot encode "
                               "a text prompt the same way: give the prompt as token ids (prompt_ids, --prompt-ids)")
        return self.detokenize.encode_prompt(text)

    # --- all together -------------------------------------------------------------------------

    def caption(
        self,
        images: Sequence[ImageSource] | ImageSource,
        options: GenerationOptions | None = None,
        batch_size: int = 8,
        output_attentions: bool = False,
        attention_layer: int = -1,
        attention_heads: str = "mean",
        **generation_kwargs,
    ) -> list[Caption]:
        """Caption images (paths, PIL images or HxWx3 uint8 arrays, any mix): one `Caption` each.

        `generation_kwargs` are generate()'s names, the fields of `GenerationOptions` (num_beams,
        max_new_tokens, min_new_tokens, length_penalty, no_repeat_ngram_size, early_stopping,
        num_return_sequences, prompt_ids, prompt, bad_words_ids, stopping, postprocess); those left as
        None take `options`' value, then the bundle's default. With a prompt, `token_ids` and `text`
        are what follows it.

        `output_attentions` (not a generation option: the tokens are the same either way) fills
        `Caption.cross_attentions` from decoder layer `attention_layer` (negative counts from the
        last), heads averaged ("mean") or kept ("all"). It needs a bundle exported with
        `--with-attentions` and the cpu backend, and runs that bundle's attention-emitting step.
        """
        unknown = sorted(set(generation_kwargs) - set(OPTION_NAMES))
        if unknown:
            raise OptionsError(f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(OPTION_NAMES)}")
        images = image_list(images)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise OptionsError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        opts = (options or GenerationOptions()).merged(**generation_kwargs)
        resolved = self.resolve_options(opts)  # fail on bad options before any work
        self.check_memory(min(batch_size, max(1, len(images))), resolved)
        if output_attentions:
            self._attention_model(attention_layer, attention_heads)
        out: list[Caption] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            patch = self.bundle.manifest.architecture.encoder_patch_size
            pixels, sizes = preprocess_sized(chunk, self.preprocess_spec, patch)
            hyps = self.decode(self.encode(pixels, opts), opts, output_attentions, attention_layer, attention_heads)
            out.extend(self.to_caption(h, resolved, size, opts) for h, size in zip(hyps, sizes))
        return out

    def parse_answer(self, token_ids: Sequence[int], image_size: tuple[int, int] | None = None,
                     options: GenerationOptions | None = None) -> Any:
        """A generated answer as a structure (`Caption.parsed`), or None for a bundle without a parser.

        Florence-2: `Florence2Processor.post_process_generation` of the answer for the task of `options`'
        prompt (else the bundle's default prompt; None when the prompt came as token ids), with
        locations in `image_size` = the original image's (width, height) pixels. Donut: token2json.
        """
        from .donut import is_donut, sequence_to_json

        man = self.bundle.manifest
        if man.florence2 is not None:
            opts = options or GenerationOptions()
            if opts.prompt is None and opts.prompt_ids is not None:
                return None
            task = florence2.task_of(opts.prompt if opts.prompt is not None else man.florence2.default_prompt,
                                     man.florence2)
            text = florence2.answer_text(token_ids, man.generation,
                                         lambda ids: self.detokenize(ids, skip_special_tokens=False))
            return florence2.post_process_generation(text, task, image_size, man.florence2)
        if is_donut(man):
            return sequence_to_json(token_ids, self.detokenize, man.generation)
        return None

    def caption_feed(
        self,
        source,
        every: float = 1.0,
        dedupe: float | None = None,
        batch_size: int = 8,
        max_frames: int | None = None,
        fps: float = 1.0,
        options: GenerationOptions | None = None,
        on_error=None,
    ):
        """Caption a feed: yields `edgecap.feeds.FrameCaption`s lazily, one per sampled frame.

        `source`: video file(s), frame folder(s) or glob(s). One frame every `every` seconds;
        `dedupe` (None = `edgecap.feeds.DEFAULT_DEDUPE`, 0 = off) reuses the last caption for
        near-identical frames; `fps` times frame folders; `on_error(problem)` gets bad sources and
        decode errors (default: `FeedError` at the end). See `edgecap.feeds`.
        """
        from .feeds import DEFAULT_DEDUPE, caption_feed

        return caption_feed(self, source, every=every, dedupe=DEFAULT_DEDUPE if dedupe is None else dedupe,
                            batch_size=batch_size, max_frames=max_frames, fps=fps, options=options,
                            on_error=on_error)

    def caption_text(self, hyp: decoding.Hypothesis, options: ResolvedOptions) -> tuple[str, str | None]:
        """(text, missing_page) of a hypothesis: decoded, cleaned up by `options.postprocess`, or the
        page mark Nougat's predict.py writes instead (see `Caption.missing_page`)."""
        from .nougat import MISSING_PAGE_POST, PAGE_EMPTY, PAGE_FAIL, page_mark

        text = postprocess_text(self.detokenize(hyp.token_ids), options.postprocess)
        if options.postprocess is not None and text.strip() == MISSING_PAGE_POST:
            return page_mark(PAGE_EMPTY), PAGE_EMPTY  # predict.py: uncaught repetitions, most likely empty
        if hyp.repetition_start is not None:
            kind = PAGE_FAIL if hyp.repetition_start > 0 else PAGE_EMPTY
            return page_mark(kind), kind
        return text, None

    def to_caption(self, hyps: list[decoding.Hypothesis], options: ResolvedOptions,
                   image_size: tuple[int, int] | None = None, request: GenerationOptions | None = None) -> Caption:
        """One image's hypotheses (from `decode`) as a `Caption`, its alternatives after it. `request`
        (the options as asked, their prompt naming a Florence-2 task) and `image_size` (the image's
        width, height) give `Caption.parsed` (see `parse_answer`)."""
        caps = []
        for h in hyps:
            text, missing = self.caption_text(h, options)
            caps.append(Caption(text, h.token_ids, h.score, (), h.token_scores, h.cross_attentions, missing,
                                parsed=self.parse_answer(h.token_ids, image_size, request)))
        return replace(caps[0], alternatives=tuple(caps[1:]))
