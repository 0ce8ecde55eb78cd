"""manga-ocr's output clean-up (`manga_ocr.ocr.post_process` in kha-white/manga-ocr), without its
`jaconv` dependency: spaces removed (the character tokenizer decodes with a space between
characters), `…` and runs of `・`/`.` as that many dots, then half-width characters made full-width
as `jaconv.h2z(text, ascii=True, digit=True)` does (tests/test_manga_postprocess.py holds it equal to
jaconv on every character)."""

from __future__ import annotations

import re
import unicodedata

# Half-width katakana that take the voiced mark ﾞ / the semi-voiced ﾟ and become one full-width
# character (jaconv's table: ｦﾞ and ﾜﾞ stay two characters although Unicode has ヺ and ヷ)
_VOICED = set("ｶｷｸｹｺｻｼｽｾｿﾀﾁﾂﾃﾄﾊﾋﾌﾍﾎｳ")
_SEMI_VOICED = set("ﾊﾋﾌﾍﾎ")
_DOTS = re.compile("[・.]{2,}")


def to_full_width(text: str) -> str:
    """ASCII (space included) and half-width katakana to their full-width forms."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        code = ord(c)
        if code == 0x20:
            out.append("\u3000")
        elif 0x21 <= code <= 0x7E:
            out.append(chr(code + 0xFEE0))
        elif 0xFF61 <= code <= 0xFF9D:  # half-width katakana and punctuation (the marks themselves stay)
            mark = text[i + 1] if i + 1 < len(text) else ""
            if (mark == "ﾞ" and c in _VOICED) or (mark == "ﾟ" and c in _SEMI_VOICED):
                out.append(unicodedata.normalize("NFKC", c + mark))
                i += 2
                continue
            out.append(unicodedata.normalize("NFKC", c))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def post_process(text: str) -> str:
    """manga-ocr's clean-up of a decoded caption."""
    text = "".join(text.split())
    text = text.replace("…", "...")
    text = _DOTS.sub(lambda m: "." * (m.end() - m.start()), text)
    return to_full_width(text)
