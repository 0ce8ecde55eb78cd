"""Nougat's text clean-up and page marks, without torch (or transformers).

:func:`post_process` gives what transformers' ``NougatTokenizerFast.post_process_generation`` (5.x:
``NougatTokenizer``) gives for one generated page: section titles that are too long or empty
dropped, a repeated tail cut, hallucinated reference lists replaced by ``[MISSING_PAGE_POST]``,
list items split onto their own lines, table and LaTeX whitespace fixes, and (``fix_markdown``)
the markdown compatibility fixes of Nougat's ``predict.py``: equation tags, bold math, clickable
URLs, fenced algorithms. The regular expressions are Nougat's, since they are what defines the output.

Two dependencies of transformers' version are replaced: ``Levenshtein.ratio`` by :func:`ratio` (the
same normalized indel similarity), and nltk's English word list, which decides whether a page that
ends mid-sentence gets a trailing space, is used when nltk and its ``words`` corpus are installed;
without them a space is added, as transformers does when the corpus is missing.

Page marks (:func:`page_mark`) are what Nougat's ``predict.py`` writes instead of a page it cannot
trust: ``[MISSING_PAGE_FAIL:n]`` for an output that repeated itself, ``[MISSING_PAGE_EMPTY:n]`` for one
that repeated from its start or was cleaned up to nothing but a missing-page mark.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

log = logging.getLogger(__name__)

MISSING_PAGE_POST = "[MISSING_PAGE_POST]"
PAGE_FAIL, PAGE_EMPTY = "fail", "empty"  # Caption.missing_page


def page_mark(kind: str, page: int | None = None) -> str:
    """``[MISSING_PAGE_FAIL:3]`` / ``[MISSING_PAGE_EMPTY:3]`` (without ``:n`` when the page is unknown)."""
    return f"[MISSING_PAGE_{kind.upper()}{'' if page is None else f':{page}'}]"


# --- similarity ---------------------------------------------------------------------------------


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence, bit-parallel over `b` (Hyyro 2004): lines can be
    thousands of characters long, a quadratic table in Python would take seconds."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(b):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(b)) - 1
    row = full
    for ch in a:
        match = row & masks.get(ch, 0)
        row = ((row + match) | (row - match)) & full
    return len(b) - bin(row).count("1")


def ratio(a: str, b: str) -> float:
    """``Levenshtein.ratio``: 1 - indel distance / total length (1.0 for two empty strings)."""
    total = len(a) + len(b)
    if total == 0:
        return 1.0
    return 1.0 - (total - 2 * _lcs_length(a, b)) / total


# --- markdown -----------------------------------------------------------------------------------

_MARKDOWN_RULES: tuple[tuple[str, str, int], ...] = (
    # "(3) \[x\]" and "\[x\] (3)" on a line of their own: the number becomes the equation's tag
    (r"^\(([\d.]+[a-zA-Z]?)\) \\\[(.+?)\\\]$", r"\[\2 \\tag{\1}\]", re.MULTILINE),
    (r"^\\\[(.+?)\\\] \(([\d.]+[a-zA-Z]?)\)$", r"\[\1 \\tag{\2}\]", re.MULTILINE),
    (r"^\\\[(.+?)\\\] \(([\d.]+[a-zA-Z]?)\) (\\\[.+?\\\])$", r"\[\1 \\tag{\2}\] \3", re.MULTILINE),
)
_URL = re.compile(r"((?:http|ftp|https):\/\/(?:[\w_-]+(?:(?:\.[\w_-]+)+))(?:[\w.,@?^=%&:\/~+#-]*[\w@?^=%&\/~+#-]))")


def markdown_compatible(text: str) -> str:
    """Nougat's markdown fixes: equation tags, ``\\bm``/``\\boldmath`` as ``\\mathbf``, URLs as
    ``[url](url)``, fenced blocks on their own lines."""
    for pattern, repl, flags in _MARKDOWN_RULES:
        text = re.sub(pattern, repl, text, flags=flags)
    text = text.replace(r"\. ", ". ")
    text = text.replace(r"\bm{", r"\mathbf{").replace(r"{\\bm ", r"\mathbf{")
    text = re.sub(r"\\mbox{ ?\\boldmath\$(.*?)\$}", r"\\mathbf{\1}", text)
    text = _URL.sub(r"[\1](\1)", text)
    return re.sub(r"```\s*(.+?)\s*```", r"```\n\1\n```", text, flags=re.DOTALL)


# --- lists --------------------------------------------------------------------------------------

# a list item's numbering ("2", "iv", "2.1"): its dots give the nesting level
_NUMERAL = re.compile(r"^[\dixv]+(?:\.[\dixv])*$", re.IGNORECASE)


def normalize_list_like_lines(text: str) -> str:
    """A line that starts with "-" or "*" and holds further " - "/" * " items is split into one
    item per line, indented by the dots of each item's numbering."""
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines):
        found = re.search(r". ([-*]) ", line)
        if not found or line[0] not in "-*":
            out.append(line)
            continue
        bullet = found.group(1) + " "
        rebuilt = ""
        for i, item in enumerate(line.split(bullet)[1:]):
            numeral, _, rest = item.strip().partition(" ")
            if not rest:
                continue
            level = numeral.count(".") if _NUMERAL.match(numeral) else 0
            lead = bullet if i > 0 or number == 0 else line[0] + " "
            rebuilt += ("\n" if i > 0 else "") + "\t" * level + lead + item.strip()
        if number == len(lines) - 1:
            rebuilt += "\n"
        out.append(rebuilt)
    return "\n".join(out)


# --- repetitions --------------------------------------------------------------------------------


def _next_stop(text: str, start: int) -> int | None:
    """Index of the first '.', '?', '!' or newline at or after `start`."""
    for i in range(start, len(text)):
        if text[i] in ".?!\n":
            return i
    return None


def truncate_repetitions(text: str, min_len: int = 30) -> str:
    """Cut a tail that repeats (at least `min_len` characters, case-insensitive) down to one copy,
    then extend to the end of the sentence, as Nougat does."""
    lower = text.lower()
    n = len(lower)
    if n < 2 * min_len:
        return text
    period = None  # the longest tail length whose tail equals the text just before it
    for length in range(min_len, int(n / 2)):
        if lower[n - 2 * length:n - length] == lower[n - length:]:
            period = length
    if period is None:
        return text
    unit = lower[-period:]
    kept = lower
    while kept.endswith(unit):
        kept = kept[:-period]
    tail = lower[len(kept):]
    while True:
        end = _next_stop(lower, len(kept))
        start = _next_stop(lower[::-1], len(kept))
        if not (end and start):
            break
        sentence = lower[start:end]
        kept = lower[:end + 1]
        if sentence in tail:
            break
    return text[:len(kept)]


# --- references ---------------------------------------------------------------------------------


def remove_numbers(line: str) -> str:
    return re.sub(r"(?:[\d_]|\*\*)", "", line).strip()


def _similar_runs(lines: list[str], clean: list[str]) -> list[tuple[int, int]]:
    """(start, end) of runs of more than 15 lines where each is (nearly) the next non-empty one:
    a reference list the model made up by counting on."""
    marked = [False] * len(lines)
    for i in range(len(lines) - 1):
        j = i + 1
        while not clean[j] and j < len(lines) - 1:
            j += 1
        if (3 < len(clean[i]) < 200 and 3 < len(clean[j]) < 200 and not clean[i].startswith("[MISSING_PAGE")
                and (clean[i] == clean[j] or ratio(clean[i], clean[j]) > 0.9)):
            marked[i:j] = [True] * (j - i)
    ids = [i for i, m in enumerate(marked) if m]
    if not ids:
        return []
    runs, first = [], 0
    for k in range(len(ids) - 1):
        if ids[k + 1] - ids[k] > 3:
            runs.append((ids[first], ids[k] + 2))
            first = k + 1
    runs.append((ids[first], ids[-1] + 2))
    return [run for run in runs if run[1] - run[0] > 15]


def _first_difference(a: str, b: str) -> int | None:
    """Walk `a` and `b` together, digits skipped, until their characters differ or one runs out;
    the index in `b` of the last character read from it (digits included), None if none was."""
    i = j = 0
    last = None
    while True:
        while i < len(a) and a[i].isnumeric():
            i += 1
        if i >= len(a):
            return last
        char_a = a[i]
        i += 1
        while True:
            if j >= len(b):
                return last
            last, char_b = j, b[j]
            j += 1
            if not char_b.isnumeric():
                break
        if char_a != char_b:
            return last


def _run_text(lines: list[str], clean: list[str], run: tuple[int, int]) -> str:
    """The text of one made-up run, widened to where the lines stop resembling its first one."""
    base = clean[run[0]]
    start, end = run
    trim_start = False
    for i in range(max(0, run[0] - 1), max(0, run[0] - 5), -1):  # at most 4 lines back
        if not lines[i]:
            continue
        if lines[i] == "## References":
            start = i
            break
        if ratio(base, remove_numbers(lines[i])) < 0.9:
            start = i + 1
            before = remove_numbers(lines[max(0, i - 1)].partition("* [")[-1])
            if len(before) >= 0.75 * len(base) and ratio(base, before) < 0.9:
                start = i
            trim_start = True
            break
    for i in range(min(len(lines), run[1]), min(len(lines), run[1] + 5)):
        if ratio(base, remove_numbers(lines[i])) < 0.9:
            end = i
            break
    if len(lines) <= end:
        end = len(lines) - 1
    text = "\n".join(lines[start:end + 1])
    # the last line may run on into the next page's text: cut where it departs from the line before
    last = _first_difference(lines[end - 1], lines[end])
    if trim_start and "* [" in text:
        text = "* [" + text.partition("* [")[-1]
    if last is not None:
        delta = len(lines[end]) - last - 1
        if delta > 0:
            text = text[:-delta]
    return text.strip()


def remove_hallucinated_references(text: str) -> str:
    lines = text.split("\n")
    clean = [remove_numbers(line) for line in lines]
    runs = [_run_text(lines, clean, run) for run in _similar_runs(lines, clean)]
    for run in reversed(runs):
        text = text.replace(run, f"\n\n{MISSING_PAGE_POST}\n\n")
    return re.sub(r"## References\n+\[MISSING_PAGE_POST(:\d+)?\]", "\n\n[MISSING_PAGE_POST\\1]", text)


# --- tables -------------------------------------------------------------------------------------


def correct_tables(text: str) -> str:
    """Drop lines that cannot be tables (too many tabulars, columns or cells), put table and tabular
    environments on lines of their own, drop empty tabulars."""
    for line in text.split("\n"):
        if line.count("\\begin{tabular}") > 15 or line.count("\\multicolumn") > 60 or line.count("&") > 400:
            text = text.replace(line, "")
    text = text.replace("\\begin{table} \\begin{tabular}", "\\begin{table}\n\\begin{tabular}")
    text = text.replace("\\end{tabular} \\end{table}", "\\end{tabular}\n\\end{table}")
    text = text.replace("\\end{table} Tab", "\\end{table}\nTab")
    text = re.sub(r"(^.+)\\begin{tab", r"\1\n\\begin{tab", text, flags=re.MULTILINE)
    text = text.replace(r"\begin{tabular}{l l}  & \\ \end{tabular}", "")
    return text.replace("\\begin{tabular}{}\n\n\\end{tabular}", "")


# --- the whole clean-up -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _english_words() -> frozenset[str] | None:
    """nltk's English word list where nltk and its corpus are installed, else None."""
    try:
        import nltk

        return frozenset(nltk.corpus.words.words())
    except (ImportError, LookupError):
        return None


def _ending(text: str) -> str:
    """The separator Nougat appends so that consecutive pages join cleanly."""
    if text.endswith((".", "}")):
        text += "\n\n"
    if re.match(r"[A-Z0-9,;:]$", text):
        return text + " "
    if text.startswith(("#", "**", "\\begin")):
        return "\n\n" + text
    if text.split("\n")[-1].startswith(("#", "Figure", "Table")):
        return text + "\n\n"
    words = _english_words()
    if words is None or text.split(" ")[-1] in words:
        return text + " "
    return text


def post_process(text: str, fix_markdown: bool = True) -> str:
    """One page's generated text cleaned up as ``NougatTokenizerFast.post_process_single`` does."""
    text = re.sub(r"(?:\n|^)#+ \d*\W? ?(.{100,})", r"\n\1", text)  # a title that long is not one
    text = text.strip()
    text = text.replace("\n* [leftmargin=*]\n", "\n")
    text = re.sub(r"^#+ (?:[\d+\.]+|[ixv\.]+)?\s*(?:$|\n\s*)", "", text, flags=re.MULTILINE)  # empty titles
    lines = text.split("\n")
    if lines[-1].startswith("#") and lines[-1].lstrip("#").startswith(" ") and len(lines) > 1:
        log.debug("likely hallucinated title at the end of the page: %s", lines[-1])
        text = "\n".join(lines[:-1])
    text = truncate_repetitions(text)
    text = remove_hallucinated_references(text)
    text = re.sub(r"^\* \[\d+\](\s?[A-W]\.+\s?){10,}.*$", "", text, flags=re.MULTILINE)  # runaway initials
    text = re.sub(r"^(\* \[\d+\])\[\](.*)$", r"\1\2", text, flags=re.MULTILINE)
    text = re.sub(r"(^\w\n\n|\n\n\w$)", "", text)
    # PubMed Central's math artifacts: _x__y_ and _x_ as inline math
    text = re.sub(r"([\s.,()])_([a-zA-Z0-9])__([a-zA-Z0-9]){1,3}_([\s.,:()])", r"\1\(\2_{\3}\)\4", text)
    text = re.sub(r"([\s.,\d])_([a-zA-Z0-9])_([\s.,\d;])", r"\1\(\2\)\3", text)
    text = re.sub(r"(\nFootnote .*?:) (?:footnotetext|thanks):\W*(.*(?:\n\n|$))", r"\1 \2", text)
    text = re.sub(r"\[FOOTNOTE:.+?\](.*?)\[ENDFOOTNOTE\]", "", text)
    text = normalize_list_like_lines(text)
    text = _ending(text)
    text = correct_tables(text)
    text = text.replace("\\begin{array}[]{", "\\begin{array}{")
    text = re.sub(r"\\begin{tabular}{([clr ]){2,}}\s*[& ]*\s*(\\\\)? \\end{tabular}", "", text)
    text = re.sub(r"(\*\*S\. A\. B\.\*\*\n+){2,}", "", text)
    text = re.sub(r"^#+( [\[\d\w])?$", "", text, flags=re.MULTILINE)  # empty or cut-off titles
    text = re.sub(r"^\.\s*$", "", text, flags=re.MULTILINE)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return markdown_compatible(text) if fix_markdown else text
