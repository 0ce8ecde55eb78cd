"""Detokenization with the `tokenizers` library, matching `PreTrainedTokenizerFast.decode`."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from .bundlecheck import check_json_bounds
from .errors import BundleError, OptionsError
from .manifest import TokenizerSpec


# Clean-ups of decoded text (GenerationOptions.postprocess, Generation.postprocess): Nougat's markdown
# clean-up (NougatTokenizerFast.post_process_generation), with its markdown fixes or without them
# (Nougat's predict.py --no-markdown); manga-ocr's (manga_ocr.ocr.post_process: no spaces, full-width).
POSTPROCESSORS = ("nougat", "nougat-no-markdown", "manga-ocr")


def postprocess_text(text: str, name: str | None) -> str:
    """`text` cleaned up by the named POSTPROCESSORS entry (None: unchanged)."""
    if name is None:
        return text
    if name == "manga-ocr":
        from . import mangaocr

        return mangaocr.post_process(text)
    from . import nougat  # only bundles that ask for it pay for its regular expressions

    return nougat.post_process(text, fix_markdown=name == "nougat")


def unknown_prompt_message(prompt: str, pieces: Sequence[str], unk: str) -> str:
    """The one refusal of a prompt with text the tokenizer does not know, for `caption` and `export`:
    generate() would silently feed those pieces as the unknown token."""
    shown = ", ".join(repr(p) for p in dict.fromkeys(pieces))
    return (f"prompt {prompt!r} has text the tokenizer does not know ({shown}), which would be fed as {unk}; "
            "check its spelling (task tokens such as '<s_cord-v2>' must be in the tokenizer), or give the ids "
            "themselves with --prompt-ids (prompt_ids=[...])")


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
        # A saved tokenizer.json may pad and truncate every encoding (Nougat's: `padding: Fixed 4096`,
        # `truncation: 4096`); transformers turns both off for a call that asks for neither, so a
        # prompt is encoded without them here too. Decoding is unaffected.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.spec = spec

    def __call__(self, token_ids: Sequence[int], skip_special_tokens: bool | None = None) -> str:
        """Decode; ``skip_special_tokens`` None uses the bundle's setting (Donut's JSON needs False)."""
        skip = self.spec.skip_special_tokens if skip_special_tokens is None else skip_special_tokens
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=skip)
        return clean_up_tokenization(text) if self.spec.clean_up_tokenization_spaces else text

    @cached_property
    def unk_token(self) -> tuple[str, int] | None:
        """(token, id) of the tokenizer model's unknown token, None when it has none (byte-level BPE)."""
        model = json.loads(self.tokenizer.to_str()).get("model", {})
        if model.get("unk_token") is not None:
            token = str(model["unk_token"])
            ident = self.tokenizer.token_to_id(token)
            return None if ident is None else (token, ident)
        if model.get("unk_id") is not None:  # Unigram names it by id
            ident = int(model["unk_id"])
            return (self.tokenizer.id_to_token(ident) or "<unk>", ident)
        return None

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of `text` without special tokens, padding or truncation, as transformers'
        `tokenizer(text, add_special_tokens=False)` gives them; OptionsError if a piece is unknown."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        unk = self.unk_token
        if unk is not None and unk[1] in encoding.ids:
            pieces = [text[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets) if i == unk[1]]
            raise OptionsError(unknown_prompt_message(text, pieces, unk[0]))
        return list(encoding.ids)

    @cached_property
    def added_vocab(self) -> dict[str, int]:
        """Added tokens (special or not) to their ids, ordered by id: ``tokenizer.get_added_vocab()``."""
        decoder = self.tokenizer.get_added_tokens_decoder()
        return {decoder[i].content: i for i in sorted(decoder)}
