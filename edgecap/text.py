"""Detokenization with the `tokenizers` library, matching `PreTrainedTokenizerFast.decode`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from .bundlecheck import check_json_bounds
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
    """Token ids to text with the bundle's tokenizer.json, as the model's HF tokenizer decodes them."""

    def __init__(self, path: Path, spec: TokenizerSpec) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
        check_json_bounds(data, "tokenizer", str(path))
        try:
            self.tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a plain Exception with a serde message
            raise BundleError(f"{path}: not a valid tokenizers JSON file ({str(exc).splitlines()[0]})") from None
        self.spec = spec

    def __call__(self, token_ids: Sequence[int], skip_special_tokens: bool | None = None) -> str:
        """Decode; ``skip_special_tokens`` None uses the bundle's setting (Donut's JSON needs False)."""
        skip = self.spec.skip_special_tokens if skip_special_tokens is None else skip_special_tokens
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=skip)
        return clean_up_tokenization(text) if self.spec.clean_up_tokenization_spaces else text

    @cached_property
    def added_vocab(self) -> dict[str, int]:
        """Added tokens (special or not) to their ids, ordered by id: ``tokenizer.get_added_vocab()``."""
        decoder = self.tokenizer.get_added_tokens_decoder()
        return {decoder[i].content: i for i in sorted(decoder)}
