"""Donut outputs as JSON: ``token2json`` as transformers' ``DonutProcessor.token2json`` does it.

Donut models write their answer as a tag tree, e.g.
``<s_menu><s_nm>Latte</s_nm><s_cnt>2</s_cnt><sep/><s_nm>Bagel</s_nm></s_menu>``, which becomes
``{"menu": [{"nm": "Latte", "cnt": "2"}, {"nm": "Bagel"}]}``.  :func:`token2json` follows the
transformers algorithm step for step, quirks included, so a bundle gives the same JSON as the
PyTorch model does: case-insensitive tags, unclosed start tags dropped, ``<sep/>`` between leaves
making a list, between groups making a list of dicts, a leaf that is a whole added token such as
``<yes/>`` becoming its category name (``"yes"``), and a sequence without any tag coming back as
``{"text_sequence": ...}``.

One deliberate difference: transformers recurses once per ``<sep/>`` between groups, so an output
with about a thousand groups raises ``RecursionError`` there; here those are a loop and the result
is what the recursion would have returned.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Sequence, Union

from .manifest import Generation, Manifest
from .preprocess import PreprocessSpec
from .text import Detokenizer

JSON = Union[dict[str, Any], list[Any]]
_SEP = "<sep/>"


def is_donut(source: Manifest | PreprocessSpec) -> bool:
    """Whether a bundle (its manifest, or its preprocessing spec) is a Donut model.

    Donut bundles are recognised by their image preprocessing (``kind == "donut"``), which is what
    the exporter records from a ``DonutImageProcessor`` config.
    """
    if isinstance(source, PreprocessSpec):
        return source.kind == "donut"
    return source.preprocess.get("kind") == "donut"


def token2json(tokens: str, added_vocab: Collection[str] = (), is_inner_value: bool = False) -> JSON:
    """Turn a decoded Donut sequence into JSON, as ``DonutProcessor.token2json`` does.

    ``tokens``: the text decoded *with* special tokens, after the task prompt (what
    :func:`sequence_to_json` passes). ``added_vocab``: the tokenizer's added tokens (a dict from
    ``Detokenizer.added_vocab`` or ``tokenizer.get_added_vocab()``; only membership is used),
    needed to turn categorical leaves like ``<yes/>`` into ``"yes"``. ``is_inner_value``: as in
    transformers, for nested calls; the top level returns a dict, except that groups separated by
    ``<sep/>`` at the top level come back as a list.
    """
    groups: list[dict[str, Any]] = []  # outputs closed by a <sep/>: transformers' recursion, unrolled
    output: dict[str, Any] = {}
    while tokens:
        # r"<s_(.*?)>" found by hand, as transformers does (avoids regex backtracking on long text)
        start = re.search(r"<s_", tokens, re.IGNORECASE)
        if start is None:
            break
        start_token = tokens[start.start():]
        if ">" not in start_token:
            break
        start_token = start_token[: start_token.index(">") + 1]
        key = start_token[len("<s_"): -len(">")]
        end_match = re.search(rf"</s_{re.escape(key)}>", tokens, re.IGNORECASE)
        if end_match is None:
            tokens = tokens.replace(start_token, "")  # an unclosed tag is dropped, its text kept
            continue
        end_token = end_match.group()
        content = re.search(f"{re.escape(start_token)}(.*?){re.escape(end_token)}", tokens,
                            re.IGNORECASE | re.DOTALL)
        if content is not None:
            _add_value(output, key, content.group(1).strip(), added_vocab)
        tokens = tokens[tokens.find(end_token) + len(end_token):].strip()
        if tokens[: len(_SEP)] == _SEP:  # a sibling group follows
            groups.append(output)
            output, tokens, is_inner_value = {}, tokens[len(_SEP):], True
    if groups:
        return groups + ([output] if output else [])
    if output:
        return [output] if is_inner_value else output
    return [] if is_inner_value else {"text_sequence": tokens}


def _add_value(output: dict[str, Any], key: str, content: str, added_vocab: Collection[str]) -> None:
    """Store one tag's content: a nested tree, or a leaf (a list of leaves when `<sep/>`-separated)."""
    if "<s_" in content and "</s_" in content:  # non-leaf node
        value = token2json(content, added_vocab, is_inner_value=True)
        if value:
            output[key] = value[0] if len(value) == 1 else value
        return
    leaves = []
    for leaf in content.split(_SEP):
        leaf = leaf.strip()
        if leaf in added_vocab and leaf[0] == "<" and leaf[-2:] == "/>":
            leaf = leaf[1:-2]  # a categorical special token such as <yes/>
        leaves.append(leaf)
    output[key] = leaves[0] if len(leaves) == 1 else leaves


def sequence_to_json(token_ids: Sequence[int], detokenizer: Detokenizer, generation: Generation) -> JSON:
    """A generated Donut answer (token ids after the prompt, as ``Caption.token_ids``) to JSON.

    Follows Donut's documented recipe: decode keeping special tokens (the tags are special
    tokens), drop the end and padding tokens, then :func:`token2json` with the tokenizer's added
    vocabulary.  The task prompt is not part of ``token_ids``, so nothing else is removed.
    """
    drop = set(generation.eos_token_ids)
    if generation.pad_token_id is not None:
        drop.add(generation.pad_token_id)
    text = detokenizer([t for t in token_ids if t not in drop], skip_special_tokens=False)
    return token2json(text.strip(), detokenizer.added_vocab)
