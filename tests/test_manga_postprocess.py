"""manga-ocr's post-processing (issue 19), held to jaconv and manga-ocr's own recipe."""

from __future__ import annotations

import random
import re

import pytest

from edgecap.mangaocr import post_process, to_full_width

jaconv = pytest.importorskip("jaconv")


def reference(text: str) -> str:
    """kha-white/manga-ocr's post_process, written from its documented steps, with jaconv itself."""
    text = "".join(text.split())
    text = text.replace("…", "...")
    text = re.sub("[・.]{2,}", lambda m: (m.end() - m.start()) * ".", text)
    return jaconv.h2z(text, ascii=True, digit=True)


def test_full_width_equals_jaconv_on_every_character_and_kana_pair():
    chars = [chr(c) for c in range(0x20, 0x10000) if not 0xD800 <= c < 0xE000]
    assert [to_full_width(c) for c in chars] == [jaconv.h2z(c, ascii=True, digit=True) for c in chars]
    kana = [chr(c) for c in range(0xFF61, 0xFFA0)]
    pairs = [a + b for a in kana for b in kana]
    assert [to_full_width(p) for p in pairs] == [jaconv.h2z(p, ascii=True, digit=True) for p in pairs]


def test_post_process_equals_manga_ocr():
    samples = ["こ れ は ペ ン で す 。", "え … っ ！ ？", "・ ・ ・ な に", "ABC 123 ! ?", "ｶﾞﾝﾊﾞﾚ", "．．. .", ""]
    rng = random.Random(0)
    alphabet = list("あいうアイウ漢字ｶﾞﾊﾟ・.…!? 1a\u3000")
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(500)]
    assert [post_process(s) for s in samples] == [reference(s) for s in samples]
