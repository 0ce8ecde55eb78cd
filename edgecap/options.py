"""Generation options: one dataclass shared by the API, the CLI, feeds and the bench.

`None` means "the bundle's default" (read from the model's generation config at export).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import numpy as np

from .errors import OptionsError
from .manifest import Generation
from .stopping import STOPPING_RULES
from .text import POSTPROCESSORS


@dataclass(frozen=True)
class GenerationOptions:
    num_beams: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | str | None = None
    num_return_sequences: int | None = None
    # Decoder prompt: ids fed after the decoder start token (generate(decoder_input_ids=...)), or
    # text tokenized without special tokens. Outputs are what follows the prompt. Bundles whose encoder
    # reads the prompt (Florence-2: Generation.prompt_target "encoder") take a task prompt instead,
    # e.g. "<OD>" or "<CAPTION_TO_PHRASE_GROUNDING>a red car", or its encoder token ids.
    prompt_ids: Sequence[int] | None = None
    prompt: str | None = None
    bad_words_ids: Sequence[Sequence[int]] | None = None  # generate()'s: sequences never generated
    # A stopping rule beyond eos/max_new_tokens (edgecap.stopping): "nougat" (Nougat's repetition
    # stop, greedy only), or "none" to turn off the bundle's; None: the bundle's default.
    stopping: str | None = None
    # Clean-up of the decoded text (edgecap.text.POSTPROCESSORS): "nougat" (Nougat's markdown clean-up),
    # "nougat-no-markdown", or "none"; None: the bundle's default. Tokens and scores are unchanged.
    postprocess: str | None = None

    def check_types(self) -> None:
        """Each given option has the type generate() takes (a float beam count or a string length is a
        mistake, not something to round): OptionsError naming it."""
        for name, kind in _OPTION_TYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            ok = {
                "int": isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                "float": isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                and math.isfinite(value),
                "early": value is True or value is False or (isinstance(value, str) and value == "never"),
                "str": isinstance(value, str),
                "ids": isinstance(value, Sequence) and not isinstance(value, (str, bytes))
                and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in value),
                "id_lists": isinstance(value, Sequence) and not isinstance(value, (str, bytes)),
            }[kind]
            if not ok:
                raise OptionsError(f"{name} must be {_TYPE_WORDS[kind]}, got {value!r}")

    def merged(self, **overrides) -> "GenerationOptions":
        """A copy with the non-None `overrides` applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def resolve(self, defaults: Generation, encode: Callable[[str], list[int]] | None = None,
                max_positions: int | None = None) -> "ResolvedOptions":
        """Options with the bundle's defaults filled in and checked. `encode` tokenizes a text
        prompt; `max_positions` is the decoder's position limit (Architecture.max_positions)."""
        def pick(name: str):
            value = getattr(self, name)
            return getattr(defaults, name) if value is None else value

        self.check_types()

        if self.prompt is not None and self.prompt_ids is not None:
            raise OptionsError("give prompt or prompt_ids, not both")
        if self.prompt is not None:
            if encode is None:
                raise OptionsError("a text prompt needs the bundle's tokenizer")
            prompt = tuple(encode(self.prompt))
        else:
            prompt = tuple(int(t) for t in pick("prompt_ids"))
        start = defaults.decoder_start_token_id
        encoder_input: tuple[int, ...] = ()
        if defaults.prompt_target == "encoder":  # the encoder reads it; the decoder starts alone
            if not prompt:
                raise OptionsError("this model reads a task prompt in its encoder: give a prompt (e.g. '<CAPTION>')")
            encoder_input, decoder_input = prompt, (start,)
        elif defaults.prompt_includes_start and prompt:
            decoder_input = prompt
        else:  # generate() adds the start token unless the prompt already begins with it
            decoder_input = prompt if prompt and prompt[0] == start else (start, *prompt)

        opts = ResolvedOptions(
            num_beams=int(pick("num_beams")),
            max_new_tokens=int(pick("max_new_tokens")),
            min_new_tokens=int(pick("min_new_tokens")),
            length_penalty=float(pick("length_penalty")),
            no_repeat_ngram_size=int(pick("no_repeat_ngram_size")),
            early_stopping=pick("early_stopping"),
            num_return_sequences=int(pick("num_return_sequences")),
            decoder_start_token_id=start,
            decoder_input_ids=decoder_input,
            encoder_input_ids=encoder_input,
            bad_words_ids=_bad_words(pick("bad_words_ids"), defaults.eos_token_ids),
            max_positions=max_positions,
            eos_token_ids=tuple(defaults.eos_token_ids),
            pad_token_id=defaults.pad_token_id,
            forced_bos_token_id=defaults.forced_bos_token_id,
            forced_eos_token_ids=tuple(defaults.forced_eos_token_ids),
            stopping=_choice("stopping", self.stopping, defaults.stopping, STOPPING_RULES),
            postprocess=_choice("postprocess", self.postprocess, defaults.postprocess, POSTPROCESSORS),
        )
        opts.check()
        return opts


@dataclass(frozen=True)
class ResolvedOptions:
    num_beams: int
    max_new_tokens: int
    min_new_tokens: int
    length_penalty: float
    no_repeat_ngram_size: int
    early_stopping: bool | str
    num_return_sequences: int
    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: tuple[int, ...] = ()
    decoder_input_ids: tuple[int, ...] = ()  # start token and prompt: what the decoder is fed first
    encoder_input_ids: tuple[int, ...] = ()  # the prompt the encoder reads (Generation.prompt_target "encoder")
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    max_positions: int | None = None
    stopping: str | None = None  # one of edgecap.stopping.STOPPING_RULES, or None
    postprocess: str | None = None  # one of edgecap.text.POSTPROCESSORS, or None

    def __post_init__(self) -> None:
        if not self.decoder_input_ids:
            object.__setattr__(self, "decoder_input_ids", (self.decoder_start_token_id,))

    @property
    def prompt_len(self) -> int:
        """Tokens before the first generated one (start token included)."""
        return len(self.decoder_input_ids)

    def check(self) -> None:
        if self.num_beams < 1:
            raise OptionsError(f"num_beams must be >= 1, got {self.num_beams}")
        negative = [t for t in self.decoder_input_ids if t < 0]
        if negative:
            raise OptionsError(f"prompt_ids: token ids must be >= 0, got {negative[0]}")
        if self.max_new_tokens < 1:
            raise OptionsError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise OptionsError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.no_repeat_ngram_size < 0:
            raise OptionsError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.early_stopping not in (True, False, "never"):
            raise OptionsError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise OptionsError(
                f"num_return_sequences ({self.num_return_sequences}) must be between 1 and num_beams ({self.num_beams})"
            )
        if self.stopping is not None and self.num_beams > 1:
            raise OptionsError(f"stopping={self.stopping!r} decodes greedily (num_beams=1), as Nougat does; got "
                               f"num_beams={self.num_beams} (pass stopping='none' to search beams without it)")
        # The decoder is fed the prompt and every generated token but the last: each needs a position.
        fed = self.prompt_len + self.max_new_tokens - 1
        if self.max_positions is not None and fed > self.max_positions:
            room = self.max_positions - self.prompt_len + 1
            prompt = f" after a {self.prompt_len - 1}-token prompt" if self.prompt_len > 1 else ""
            raise OptionsError(
                f"max_new_tokens {self.max_new_tokens} is beyond this model's limit{prompt}: its decoder has "
                f"{self.max_positions} positions, so at most {max(room, 0)} new tokens"
            )


def _bad_words(value, eos_ids: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """generate()'s bad_words_ids, checked; single-token bans of an eos token are dropped, as
    transformers' NoBadWordsLogitsProcessor does."""
    if not value:
        return ()
    try:
        seqs = tuple(tuple(int(t) for t in seq) for seq in value)
    except (TypeError, ValueError):
        raise OptionsError(f"bad_words_ids must be a list of lists of token ids, got {value!r}") from None
    if any(not seq or min(seq) < 0 for seq in seqs):
        raise OptionsError(f"bad_words_ids must hold non-empty lists of token ids >= 0, got {value!r}")
    return tuple(seq for seq in seqs if not (len(seq) == 1 and seq[0] in eos_ids))


def _choice(name: str, asked: str | None, default: str | None, known: Sequence[str]) -> str | None:
    """The named rule in force (asked, else the bundle's); "none" turns the bundle's off."""
    value = default if asked is None else asked
    if value in (None, "none"):
        return None
    if value not in known:
        raise OptionsError(f"{name} must be one of {', '.join(known)} or 'none', got {value!r}")
    return value


OPTION_NAMES = tuple(f.name for f in fields(GenerationOptions))
_OPTION_TYPES = {
    "num_beams": "int", "max_new_tokens": "int", "min_new_tokens": "int", "length_penalty": "float",
    "no_repeat_ngram_size": "int", "early_stopping": "early", "num_return_sequences": "int", "prompt_ids": "ids",
    "prompt": "str", "bad_words_ids": "id_lists",
}
_TYPE_WORDS = {"int": "an integer", "float": "a finite number", "early": "True, False or \"never\"",
               "str": "a string", "ids": "a list of integer token ids", "id_lists": "a list of lists of token ids"}
