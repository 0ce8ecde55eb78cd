"""A `tokenizer.json` for checkpoints that ship only a slow WordPiece vocabulary (`vocab.txt`).

kha-white/manga-ocr-base ships `BertJapaneseTokenizer` (character subwords): a slow tokenizer with
no fast class, so `AutoTokenizer(use_fast=True)` writes no `tokenizer.json` and the runtime (which
reads only `tokenizers` files) had nothing to load. Its *decoding* is simple and independent of
the word splitter (MeCab or basic): ids to vocabulary entries, joined by spaces, " ##" removed
(`BertTokenizer.convert_tokens_to_string`). That is what a `tokenizers` WordPiece decoder does,
so a tokenizer built from `vocab.txt` decodes exactly as the slow one; export checks it on the whole
vocabulary before writing the bundle. Its *encoding* is not the slow one's (the word splitter and
NFKC character splitting differ: BertTokenizerFast encodes kana differently), so the bundle records
that it cannot encode text, and text prompts are refused for it (token-id prompts still work).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

log = logging.getLogger(__name__)

SPECIAL_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token", "eos_token")


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.txt: one entry per line, its line number its id (BERT's load_vocab)."""
    vocab: dict[str, int] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), i)
    return vocab


def tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _special(config: dict[str, Any], key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # AddedToken serialised
        value = value.get("content")
    return value if isinstance(value, str) else None


def wordpiece_from_vocab(model_dir: Path) -> tuple[Tokenizer, dict[str, str]] | None:
    """(tokenizer, special tokens by role) built from model_dir/vocab.txt, or None without one."""
    vocab_file = model_dir / "vocab.txt"
    if not vocab_file.is_file():
        return None
    config = tokenizer_config(model_dir)
    vocab = read_vocab(vocab_file)
    roles = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
             "mask_token": "[MASK]"}
    roles.update({k: v for k in SPECIAL_KEYS if (v := _special(config, k)) is not None})
    roles = {k: v for k, v in roles.items() if v in vocab}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=roles.get("unk_token", "[UNK]"), continuing_subword_prefix="##"))
    # encoding is an approximation (see the module docstring); decoding is the slow tokenizer's
    tok.normalizer = normalizers.BertNormalizer(lowercase=bool(config.get("do_lower_case", False)))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # the runtime applies clean-up itself
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(roles.values())])
    return tok, roles


def decoding_mismatches(slow: Any, fast: Tokenizer, samples: int = 300, seed: int = 0) -> list[str]:
    """Where `fast` decodes differently from the slow HF tokenizer: every id alone (with and without
    special tokens), then random sequences; a few examples, empty when they agree."""
    size = fast.get_vocab_size(with_added_tokens=True)
    rng = random.Random(seed)
    cases = [[i] for i in range(size)] + [[rng.randrange(size) for _ in range(rng.randint(2, 40))]
                                          for _ in range(samples)]
    bad = []
    for ids in cases:
        for skip in (True, False):
            want = slow.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            got = fast.decode(ids, skip_special_tokens=skip)
            if want != got:
                bad.append(f"{ids[:6]}: {want!r} != {got!r}")
                if len(bad) >= 5:
                    return bad
    return bad


def fast_from_slow(model_dir: Path, slow: Any | None):
    """A PreTrainedTokenizerFast over the vocab.txt tokenizer, checked against `slow` (when it could be
    loaded: a MeCab word splitter needs fugashi, which decoding never uses) — or None without vocab.txt.
    Raises ValueError naming mismatches."""
    from transformers import PreTrainedTokenizerFast

    built = wordpiece_from_vocab(model_dir)
    if built is None:
        return None
    tok, roles = built
    if slow is not None:
        bad = decoding_mismatches(slow, tok)
        if bad:
            raise ValueError(f"a tokenizer built from vocab.txt decodes differently from {type(slow).__name__}: "
                             + "; ".join(bad))
        log.info("tokenizer.json built from vocab.txt: decodes as %s on all %d ids and 300 sequences",
                 type(slow).__name__, tok.get_vocab_size())
    else:
        log.warning("tokenizer.json built from vocab.txt without the slow tokenizer to compare with")
    clean = getattr(slow, "clean_up_tokenization_spaces", None)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles,
                                   clean_up_tokenization_spaces=bool(clean) if clean is not None else False)
    fast.edgecap_decode_only = True  # read by the exporter: text prompts cannot be encoded as the model's
    # manga-ocr's tokenizer: its bundles default to manga-ocr's own clean-up of the output
    japanese = tokenizer_config(model_dir).get("tokenizer_class") == "BertJapaneseTokenizer"
    fast.edgecap_postprocess = "manga-ocr" if japanese else None
    return fast
