"""Detokenization with the `tokenizers` library, matching `PreTrainedTokenizerFast.decode`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from .errors import BundleError
from .manifest import TokenizerSpec


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`, applied when the tokenizer config asks for it."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


class Detokenizer:
    def __init__(self, path: Path, spec: TokenizerSpec) -> None:
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception with a serde message
            raise BundleError(f"{path}: not a valid tokenizers JSON file ({str(exc).splitlines()[0]})") from None
        self.spec = spec

    def __call__(self, token_ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=self.spec.skip_special_tokens)
        return clean_up_tokenization(text) if self.spec.clean_up_tokenization_spaces else text
