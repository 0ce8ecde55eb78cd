"""Generation options: one dataclass shared by the API, the CLI, feeds and the bench.

`None` means "the bundle's default" (read from the model's generation config at export).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import OptionsError
from .manifest import Generation


@dataclass(frozen=True)
class GenerationOptions:
    num_beams: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | str | None = None
    num_return_sequences: int | None = None

    def merged(self, **overrides) -> "GenerationOptions":
        """A copy with the non-None `overrides` applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def resolve(self, defaults: Generation) -> "ResolvedOptions":
        def pick(name: str):
            value = getattr(self, name)
            return getattr(defaults, name) if value is None else value

        opts = ResolvedOptions(
            num_beams=int(pick("num_beams")),
            max_new_tokens=int(pick("max_new_tokens")),
            min_new_tokens=int(pick("min_new_tokens")),
            length_penalty=float(pick("length_penalty")),
            no_repeat_ngram_size=int(pick("no_repeat_ngram_size")),
            early_stopping=pick("early_stopping"),
            num_return_sequences=int(pick("num_return_sequences")),
            decoder_start_token_id=defaults.decoder_start_token_id,
            eos_token_ids=tuple(defaults.eos_token_ids),
            pad_token_id=defaults.pad_token_id,
            forced_bos_token_id=defaults.forced_bos_token_id,
            forced_eos_token_ids=tuple(defaults.forced_eos_token_ids),
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

    def check(self) -> None:
        if self.num_beams < 1:
            raise OptionsError(f"num_beams must be >= 1, got {self.num_beams}")
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


OPTION_NAMES = tuple(f.name for f in fields(GenerationOptions))
