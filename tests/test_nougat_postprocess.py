"""edgecap.nougat.post_process: equal to transformers' NougatTokenizerFast.post_process_single on
hand-made generations (tables, lists, references, repetitions, headings, footnotes, math, URLs)."""

from __future__ import annotations

import random

import pytest

from edgecap import nougat


@pytest.fixture(scope="module")
def hf_tokenizer():
    """An instance of the line's Nougat tokenizer class (its post-processing uses no vocabulary)."""
    pytest.importorskip("transformers")
    pytest.importorskip("Levenshtein")  # transformers' post-processing needs it (and nltk)
    pytest.importorskip("nltk")
    try:
        from transformers.models.nougat.tokenization_nougat import NougatTokenizer as cls
    except ImportError:
        from transformers.models.nougat.tokenization_nougat_fast import NougatTokenizerFast as cls
    return object.__new__(cls)


REFERENCES = "\n".join(
    ["## References", ""] + [f"* [{i}] A. Author and B. Writer. A study of things, part {i}. _Journal of Studies_, {i}:1-{i}, 2020."
                             for i in range(1, 25)]
    + ["Next page text begins here and goes on."])
MADE_UP = "\n".join(["Some real text before the list.", ""] + [
    f"* [{i}] Smith, J. (2019). Deep learning for documents. Proc. of the conference on things, pp. {i}-{i + 9}."
    for i in range(1, 20)])
TABLE = ("Results are in the table.\n\\begin{table} \\begin{tabular}{l l} a & b \\\\ c & d \\end{tabular} \\end{table} "
         "Table 1: Numbers.\nText \\begin{tabular}{}\n\n\\end{tabular} after.\n"
         "\\begin{tabular}{l l}  & \\\\ \\end{tabular}\n\\begin{array}[]{cc} 1 & 2 \\end{array}\n"
         "\\begin{tabular}{c c c}  & &  \\\\ \\end{tabular}")
BAD_TABLE = "ok line\n" + "x & " * 401 + "\nend."
GENERATIONS = {
    "plain": "This is a paragraph of text that ends with a period.",
    "no-period": "This page ends mid sentence with a word",
    "single-char": "A",
    "heading-start": "# 1 Introduction\n\nDeep models read documents.",
    "long-heading": "## 3 " + "A heading that is far too long to be a real section title of a paper " * 2 + "\n\nBody.",
    "empty-headings": "## 2.1\n\nText.\n### iv.\nMore text.\n#\n## x",
    "trailing-heading": "Body text of the page.\n\n## 4 Results",
    "leftmargin": "Intro\n* [leftmargin=*]\n* item one",
    "list-line": "* 1 First item. - 2 Second item - 2.1 Sub item - 3 Third\nnext line",
    "list-line-last": "Text\n- i. alpha - ii. beta - iii.1 gamma",
    "repetition": "The results are shown below. " + "We repeat this sentence again and again. " * 12,
    "repetition-lines": "Start.\n" + "\n".join(["the same line of text over and over"] * 30),
    "references": REFERENCES,
    "made-up-references": MADE_UP,
    "initials": "* [12] A. B. C. D. E. F. G. H. I. J. K. L. M. Name\n* [13][]Title of a paper.",
    "footnote": "Text.\nFootnote 1: footnotetext: the actual note\n\nMore. [FOOTNOTE:1]hidden[ENDFOOTNOTE]shown",
    "pmc-math": "where _x__ij_ and _y_ are given, with 2_k_3 also.",
    "equations": "(1) \\[E=mc^2\\]\n\\[a+b\\] (2a)\n\\[x\\] (3) \\[y\\]\nSo \\. next",
    "bold-math": "\\bm{x} and {\\\\bm y} and \\mbox{ \\boldmath$v$} done.",
    "urls": "See https://example.org/path?q=1&r=2. and ftp://files.example.com/a_b for data.",
    "algorithm": "```   for i in range(3): print(i)   ```",
    "table": TABLE,
    "bad-table": BAD_TABLE,
    "sab": "**S. A. B.**\n**S. A. B.**\n\nrest",
    "lone-dot": "Line one\n.\nLine two\n\n\n\nLine three",
    "single-word-edges": "a\n\nMiddle text here\n\nb",
    "figure-end": "Text\nFigure 3: A figure caption",
    "bold-start": "**Theorem 1.** Every page ends.",
    "begin-start": "\\begin{theorem} x \\end{theorem}",
    "missing-page": "[MISSING_PAGE_EMPTY:3]\n" + "\n".join(["* [1] same reference line here"] * 20),
    "unicode": "Ünïcödé İstanbul text with ß and ﬁ ligatures. " * 3,
    "empty": "",
    "whitespace": "  \n\n  ",
}


@pytest.mark.parametrize("fix_markdown", [True, False])
@pytest.mark.parametrize("name", sorted(GENERATIONS))
def test_matches_transformers(hf_tokenizer, name, fix_markdown):
    text = GENERATIONS[name]
    assert nougat.post_process(text, fix_markdown) == hf_tokenizer.post_process_single(text, fix_markdown=fix_markdown)


def test_generations_exercise_the_steps(hf_tokenizer):
    """The hand-made pages are not no-ops: each family of fixes changes something."""
    for name in ("references", "made-up-references", "repetition", "table", "list-line", "equations", "urls"):
        assert nougat.post_process(GENERATIONS[name]) != GENERATIONS[name], name
    assert "[MISSING_PAGE_POST]" in nougat.post_process(GENERATIONS["made-up-references"])


def test_ratio_matches_levenshtein():
    levenshtein = pytest.importorskip("Levenshtein")
    rng = random.Random(0)
    pairs = [("", ""), ("", "abc"), ("abc", "abc"), ("kitten", "sitting"), ("Ünï", "Uni")]
    for _ in range(300):
        a = "".join(rng.choice("abcde ") for _ in range(rng.randint(0, 90)))
        b = "".join(rng.choice("abcdef") for _ in range(rng.randint(0, 300)))
        pairs.append((a, b))
    for a, b in pairs:
        assert nougat.ratio(a, b) == levenshtein.ratio(a, b), (a, b)


def test_page_mark():
    assert nougat.page_mark("fail", 3) == "[MISSING_PAGE_FAIL:3]"
    assert nougat.page_mark("empty") == "[MISSING_PAGE_EMPTY]"
