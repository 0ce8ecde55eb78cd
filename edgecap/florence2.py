"""Florence-2 prompts and answers, as transformers' `Florence2Processor` makes and parses them.

A Florence-2 bundle reads its prompt in the encoder: a task token such as ``<OD>`` becomes the
question the model was trained on ("Locate the objects with category name in the image."), framed by
the tokenizer's bos and eos, and the encoder reads the image's tokens followed by those
(`Florence2Processor` puts its ``<image>`` placeholders first; the encoder graph puts the image's
tokens there itself, so only the text is fed). Tasks that take an input (phrase grounding, region
tasks with ``<loc_N>`` boxes) put the text after the token into their question.

The answer is text with ``<loc_N>`` tokens (N in 0..999, bins across the image's width and height).
:func:`post_process_generation` turns it into the structure `Florence2Processor.post_process_generation`
returns (boxes, OCR quadrilaterals, polygons), in the original image's pixel coordinates, value for
value: the same regular expressions, the same float32 bin centres truncated to integers.

Everything the parser needs comes from the bundle (`manifest.Florence2Spec`, recorded at export from
the checkpoint's processor): the task table, each task's answer type, the grounding phrases the
post-processor drops, its OCR pattern. One deliberate difference: transformers raises "Unsupported
parse task" when a processor's `post_processor_config` lacks an answer type; here it is parsed anyway.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from .errors import OptionsError
from .manifest import Florence2Spec, Generation

# The post-processing types Florence2Processor's answer table names (post_process_generation's branches).
ANSWER_TYPES = ("pure_text", "ocr", "phrase_grounding", "description_with_bboxes", "bboxes", "polygons",
                "description_with_polygons", "description_with_bboxes_or_polygons")
# The answer text the decoder writes carries these; every parser drops them first.
_FRAME_TOKENS = ("<s>", "</s>", "<pad>")
_DEFAULT_OCR = r"(.+?)" + r"<loc_(\d+)>" * 8
_TEXT_BEFORE_BOX = r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)"
_BOX = r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
_LOC = r"<loc_(\d+)>"


# --- prompts ---------------------------------------------------------------------------------------


def task_of(prompt: str, spec: Florence2Spec) -> str:
    """The task a prompt asks for: its task token (as the processor's expansion finds it), else the
    prompt itself (a free question: its answer is parsed as plain text, keyed by the question)."""
    for takes_input in (False, True):
        for t in spec.tasks:
            if t.takes_input == takes_input and t.task in prompt:
                return t.task
    return prompt


def question(prompt: str, spec: Florence2Spec) -> str:
    """The text the encoder reads for `prompt`: Florence2Processor's task-token expansion.

    A task without input must be the whole prompt (OptionsError otherwise, where transformers raises
    ValueError); a task with input takes the rest of the prompt, stripped, as its input.
    """
    for t in spec.tasks:
        if not t.takes_input and t.task in prompt:
            if prompt != t.task:
                raise OptionsError(f"prompt {prompt!r}: the task token {t.task} takes no input and must be the whole prompt")
            prompt = t.question
            break
    for t in spec.tasks:
        if t.takes_input and t.task in prompt:
            prompt = t.question.format(input=prompt.replace(t.task, "").strip())
            break
    return prompt


def encoder_prompt_ids(prompt: str, spec: Florence2Spec, tokenize: Callable[[str], list[int]]) -> list[int]:
    """The prompt's tokens as the encoder reads them after the image's: bos, the question, eos, tokenized
    together without added special tokens (the processor's input_ids after its <image> placeholders)."""
    return tokenize(spec.text_prefix + question(prompt, spec) + spec.text_suffix)


def default_prompt_ids(spec: Florence2Spec, tokenize: Callable[[str], list[int]]) -> list[int]:
    return encoder_prompt_ids(spec.default_prompt, spec, tokenize)


# --- answers ---------------------------------------------------------------------------------------


def answer_text(token_ids: Sequence[int], generation: Generation, decode: Callable[[list[int]], str]) -> str:
    """What the post-processor parses: the start token and the generated ids decoded keeping special
    tokens, as `processor.batch_decode(generate(...), skip_special_tokens=False)` gives one unpadded row."""
    return decode([generation.decoder_start_token_id, *token_ids])


def _strip_frame(text: str) -> str:
    for token in _FRAME_TOKENS:
        text = text.replace(token, "")
    return text


class _Bins:
    """<loc_N> bins -> pixel coordinates: the bin's centre, in float32, truncated (the processor's
    torch arithmetic: (N + 0.5) * (size / bins) on a float32 tensor, then .int())."""

    def __init__(self, spec: Florence2Spec, image_size: tuple[int, int]) -> None:
        bins_w, bins_h = spec.location_bins
        self.per_bin = (np.float32(image_size[0] / bins_w), np.float32(image_size[1] / bins_h))

    def points(self, bins: Sequence[int]) -> list[int]:
        """[x0, y0, x1, y1, ...] bins -> coordinates (x with the width's bins, y with the height's)."""
        values = np.asarray(bins, dtype=np.int64).astype(np.float32) + np.float32(0.5)
        scale = np.array([self.per_bin[i % 2] for i in range(len(values))], dtype=np.float32)
        return [int(v) for v in (values * scale).astype(np.int32)]


def _ascii(text: str) -> str:
    return text.encode("ascii", "ignore").decode("ascii")


def _ocr(text: str, spec: Florence2Spec, bins: _Bins, width: int, height: int) -> list[dict[str, Any]]:
    text = _strip_frame(text)
    out = []
    for content, *quad in re.findall(spec.ocr_pattern or _DEFAULT_OCR, text):
        box = bins.points([int(q) for q in quad])
        if spec.ocr_area_threshold > 0:
            xs, ys = box[0::2], box[1::2]
            # the processor's shoelace sum runs over the first three edges only
            area = 0.5 * abs(sum(xs[i] * ys[i + 1] - xs[i + 1] * ys[i] for i in range(3)))
            if area < width * height * spec.ocr_area_threshold:
                continue
        out.append({"quad_box": box, "text": content.strip()})
    return out


def _phrase_boxes(phrase_text: str, bins: _Bins) -> list[list[int]]:
    return [bins.points([int(g) for g in m.groups()]) for m in re.finditer(_BOX, phrase_text)]


def _grounding(text: str, spec: Florence2Spec, bins: _Bins) -> list[dict[str, Any]]:
    text = _strip_frame(text)
    banned = set(spec.banned_grounding_tokens)
    out = []
    for phrase_text in re.findall(r"([^<]+(?:<loc_\d+>){4,})", text):
        phrase_text = phrase_text.replace("<ground>", "", 1).replace("<obj>", "", 1)
        found = re.search(_TEXT_BEFORE_BOX, phrase_text) if phrase_text else None
        if found is None:
            continue
        phrase = found.group().strip()
        boxes = _phrase_boxes(phrase_text, bins)
        if phrase in banned or not boxes:
            continue
        out.append({"bbox": boxes, "cat_name": _ascii(phrase)})
    return out


def _boxes(text: str, bins: _Bins, allow_empty_phrase: bool) -> list[dict[str, Any]]:
    text = _strip_frame(text)
    pattern = r"(?:(?:<loc_\d+>){4,})" if allow_empty_phrase else r"([^<]+(?:<loc_\d+>){4,})"
    out = []
    for phrase_text in re.findall(pattern, text):
        phrase_text = phrase_text.replace("<ground>", "", 1).replace("<obj>", "", 1)
        if not phrase_text and not allow_empty_phrase:
            continue
        found = re.search(_TEXT_BEFORE_BOX, phrase_text)
        if found is None:
            continue
        phrase = _ascii(found.group().strip())
        out += [{"bbox": box, "cat_name": phrase} for box in _phrase_boxes(phrase_text, bins)]
    return out


def _polygons(text: str, bins: _Bins, allow_empty_phrase: bool) -> list[dict[str, Any]]:
    """Phrases with <poly>...</poly> groups of <loc_N> pairs separated by <sep> (Florence's defaults;
    the processor never asks for its box-at-start variant)."""
    text = _strip_frame(text)
    sep, start, end = "<sep>", "<poly>", "</poly>"
    piece = rf"(?:<loc_\d+>|{re.escape(sep)}|{re.escape(start)}|{re.escape(end)}){{4,}}"
    pattern = rf"(?:{piece})" if allow_empty_phrase else rf"([^<]+{piece})"
    phrase_before = r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_|<poly>)"
    one_polygon = rf"{re.escape(start)}(.*?){re.escape(end)}"
    coordinates = rf"((?:<loc_\d+>)+)(?:{re.escape(sep)}|$)"
    out = []
    for phrase_text in re.findall(pattern, text):
        rest = re.sub(r"^<loc_\d+>", "", phrase_text, count=1)
        if not rest and not allow_empty_phrase:
            continue
        found = re.search(phrase_before, rest)
        if found is None:
            continue
        phrase = found.group().strip()
        if start in phrase_text and end in phrase_text:
            instances = [m.group(1) for m in re.finditer(one_polygon, phrase_text)]
        else:
            instances = [phrase_text]
        for inst in instances:
            groups = list(re.finditer(coordinates, inst))
            if not groups:
                continue
            polygons = []
            for g in groups:
                locs = [int(n) for n in re.findall(_LOC, g.group(1))]
                polygons.append(bins.points(locs[: len(locs) - len(locs) % 2]))
            out.append({"cat_name": phrase, "polygons": polygons})
    return out


def post_process_generation(text: str, task: str, image_size: tuple[int, int] | None,
                            spec: Florence2Spec) -> dict[str, Any]:
    """`Florence2Processor.post_process_generation(text, task=task, image_size=image_size)`:
    ``{task: answer}``. `text`: the answer decoded with its special tokens (:func:`answer_text`);
    `image_size`: the original image's (width, height), needed by every task but plain text."""
    kind = spec.answer_types.get(task, "pure_text")
    if kind == "pure_text":
        return {task: text.replace("<s>", "").replace("</s>", "").strip()}
    if image_size is None:
        raise ValueError(f"{task}: answers with locations need the image's size (width, height)")
    width, height = int(image_size[0]), int(image_size[1])
    bins = _Bins(spec, (width, height))
    if kind in ("description_with_bboxes", "bboxes"):
        found = _boxes(text, bins, allow_empty_phrase=kind == "bboxes")
        answer: dict[str, Any] = {"bboxes": [i["bbox"] for i in found], "labels": [i["cat_name"] for i in found]}
    elif kind == "ocr":
        found = _ocr(text, spec, bins, width, height)
        answer = {"quad_boxes": [i["quad_box"] for i in found], "labels": [i["text"] for i in found]}
    elif kind == "phrase_grounding":
        found = _grounding(text, spec, bins)
        answer = {"bboxes": [b for i in found for b in i["bbox"]],
                  "labels": [i["cat_name"] for i in found for _ in i["bbox"]]}
    elif kind in ("description_with_polygons", "polygons"):
        found = _polygons(text, bins, allow_empty_phrase=kind == "polygons")
        answer = {"polygons": [i["polygons"] for i in found], "labels": [i["cat_name"] for i in found]}
    elif kind == "description_with_bboxes_or_polygons":
        if "<poly>" in text:
            polys, boxes = _polygons(text, bins, allow_empty_phrase=False), []
        else:
            polys, boxes = [], _boxes(text, bins, allow_empty_phrase=False)
        answer = {"bboxes": [i["bbox"] for i in boxes], "bboxes_labels": [i["cat_name"] for i in boxes],
                  "polygons": [i["polygons"] for i in polys], "polygons_labels": [i["cat_name"] for i in polys]}
    else:
        raise ValueError(f"unknown Florence-2 answer type {kind!r} for task {task}")
    return {task: answer}


def answer_summary(parsed: Any) -> str | None:
    """One line of text for a parsed Florence-2 answer (subtitles): the plain-text answer, or the
    labels of what it located, comma-separated; None for anything else (a Donut answer, None)."""
    if not isinstance(parsed, dict) or len(parsed) != 1:
        return None
    (answer,) = parsed.values()
    if isinstance(answer, str):
        return answer
    keys = [k for k in ("labels", "bboxes_labels", "polygons_labels") if isinstance(answer, dict) and k in answer]
    if not keys:
        return None
    return ", ".join(label for k in keys for label in answer[k] if label)
