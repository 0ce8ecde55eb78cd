"""edgecap.florence2 against transformers' Florence2Processor itself: the task-prompt expansion and
post_process_generation, on hand-made answers of every task type and on random token soups."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

import tiny_florence2  # noqa: E402
from edgecap import florence2  # noqa: E402
from edgecap import manifest as mf  # noqa: E402
from edgecap.errors import OptionsError  # noqa: E402
from edgecap_export import family_florence2  # noqa: E402


class _Geometry:  # what family_florence2.spec reads of the encoder
    max_positions = 160


@pytest.fixture(scope="module")
def processor():
    return tiny_florence2.processor()


@pytest.fixture(scope="module")
def spec(processor):
    return family_florence2.spec(processor, _Geometry(), None)


def _tokenize(processor):
    backend = processor.tokenizer.backend_tokenizer
    return lambda text: backend.encode(text, add_special_tokens=False).ids


PROMPTS = [
    "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>", "<OCR_WITH_REGION>", "<OD>",
    "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<CAPTION_TO_PHRASE_GROUNDING>a red car",
    "<CAPTION_TO_PHRASE_GROUNDING>  two dogs and the image  ", "<REFERRING_EXPRESSION_SEGMENTATION>the left wheel",
    "<REGION_TO_SEGMENTATION><loc_52><loc_332><loc_932><loc_774>", "<OPEN_VOCABULARY_DETECTION>a café sign",
    "<REGION_TO_CATEGORY><loc_1><loc_2><loc_3><loc_4>", "<REGION_TO_DESCRIPTION><loc_0><loc_999><loc_5><loc_6>",
    "<REGION_TO_OCR><loc_10><loc_20><loc_30><loc_40>", "What is in the picture?", "a red car<CAPTION_TO_PHRASE_GROUNDING>",
    "",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_encoder_prompt_equals_the_processors_input_ids(processor, spec, prompt):
    """Our prompt tokens are the processor's input_ids after its <image> placeholders."""
    image = np.full((20, 30, 3), 128, np.uint8)
    ids = processor(text=prompt, images=image, return_tensors="np")["input_ids"][0].tolist()
    n = spec.image_tokens
    assert ids[:n] == [processor.tokenizer.image_token_id] * n
    assert florence2.encoder_prompt_ids(prompt, spec, _tokenize(processor)) == ids[n:]


@pytest.mark.parametrize("prompt", ["<OD> cars", "<CAPTION>please", "x<OCR>"])
def test_a_task_without_input_must_be_the_whole_prompt(processor, spec, prompt):
    with pytest.raises(ValueError):
        processor(text=prompt, images=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OptionsError, match="takes no input"):
        florence2.encoder_prompt_ids(prompt, spec, _tokenize(processor))


def test_task_of_a_prompt(spec):
    assert florence2.task_of("<OD>", spec) == "<OD>"
    assert florence2.task_of("<CAPTION_TO_PHRASE_GROUNDING>a red car", spec) == "<CAPTION_TO_PHRASE_GROUNDING>"
    assert florence2.task_of("What is this?", spec) == "What is this?"


def test_spec_is_the_processors(processor, spec):
    assert [t.task for t in spec.tasks if not t.takes_input] == list(processor.task_prompts_without_inputs)
    assert {t.task: t.question for t in spec.tasks if t.takes_input} == processor.task_prompts_with_input
    assert spec.answer_types == processor.tasks_answer_post_processing_type
    assert set(spec.answer_types.values()) <= set(florence2.ANSWER_TYPES)
    assert spec.banned_grounding_tokens == sorted(tiny_florence2.POST_PROCESSOR["phrase_grounding"]["banned_grounding_tokens"])
    assert (spec.ocr_pattern, spec.default_prompt, spec.text_prefix, spec.text_suffix) == (None, "<CAPTION>", "<s>", "</s>")


def _box(*bins: int) -> str:
    return "".join(f"<loc_{b}>" for b in bins)


# Hand-made answers, as the decoder writes them (start token, forced bos, ..., eos), per task.
ANSWERS = {
    "<CAPTION>": ["</s><s>A green car parked in front of a yellow building.</s>", "</s><s>  spaced out  </s><pad><pad>",
                  "</s><s>a caption with<loc_5> a location</s>", "</s><s></s>"],
    "<OD>": [
        "</s><s>car" + _box(54, 375, 906, 707) + "door" + _box(710, 276, 908, 537) + "wheel" + _box(708, 531, 906, 704)
        + _box(1, 2, 3, 4) + "</s>",
        "</s><s>person" + _box(0, 0, 999, 999) + _box(10, 20, 30, 40) + " café table " + _box(5, 6, 7, 8) + "</s>",
        "</s><s>too few" + _box(1, 2, 3) + "six" + _box(1, 2, 3, 4, 5, 6) + "</s>",
        "</s><s><od>dog" + _box(100, 200, 300, 400) + "</od>" + "</s>", "</s><s>nothing located</s>",
    ],
    "<OCR_WITH_REGION>": [
        "</s><s>HELLO" + _box(10, 20, 110, 20, 110, 60, 10, 60) + " World " + _box(1, 2, 3, 4, 5, 6, 7, 8) + "</s>",
        "</s><s>short" + _box(1, 2, 3, 4) + "ok" + _box(999, 0, 999, 999, 0, 999, 0, 0) + "</s>",
        "</s><s>" + _box(1, 2, 3, 4, 5, 6, 7, 8) + "no text first</s>",
    ],
    "<CAPTION_TO_PHRASE_GROUNDING>": [
        "</s><s>a red car" + _box(54, 375, 906, 707) + _box(1, 2, 3, 4) + "the image" + _box(0, 0, 999, 999)
        + "it" + _box(5, 5, 6, 6) + " the wheels " + _box(7, 8, 9, 10) + "</s>",
        "</s><s>" + _box(1, 2, 3, 4) + "café" + _box(11, 12, 13, 14) + "a" + _box(1, 1, 2, 2) + "</s>",
    ],
    "<REFERRING_EXPRESSION_SEGMENTATION>": [
        "</s><s>" + _box(1, 2, 3, 4, 5, 6, 7, 8) + "</s>",
        "</s><s>" + _box(1, 2, 3, 4, 5, 6) + "<sep>" + _box(7, 8, 9, 10, 11) + "</s>",
        "</s><s><poly>" + _box(1, 2, 3, 4, 5, 6) + "</poly><poly>" + _box(9, 9, 8, 8) + "<sep>" + _box(1, 1, 2, 2, 3)
        + "</poly></s>",
        "</s><s>the wheel" + _box(1, 2, 3, 4, 5, 6) + "</s>",
    ],
    "<OPEN_VOCABULARY_DETECTION>": [
        "</s><s>a car" + _box(1, 2, 3, 4) + "a sign" + _box(5, 6, 7, 8) + _box(9, 10, 11, 12) + "</s>",
        "</s><s>a car<poly>" + _box(1, 2, 3, 4, 5, 6) + "</poly>sign<poly>" + _box(7, 8, 9, 10, 11, 12) + "</poly></s>",
        "</s><s>a car" + _box(500, 2, 3, 4, 5, 6) + "<sep>" + _box(1, 2, 3, 4) + "<poly></s>",
    ],
    "<REGION_PROPOSAL>": ["</s><s>" + _box(1, 2, 3, 4, 5, 6, 7, 8) + "</s>", "</s><s>x" + _box(9, 8, 7, 6) + "</s>"],
    "<REGION_TO_DESCRIPTION>": ["</s><s>a wheel<loc_1></s>"],
    "What is this?": ["</s><s>a car</s>"],
}
SIZES = [(640, 480), (768, 768), (333, 1001), (1, 1), (4000, 37)]


@pytest.mark.parametrize("task", sorted(ANSWERS))
def test_post_process_equals_the_processors(processor, spec, task):
    for text in ANSWERS[task]:
        for size in SIZES:
            expected = processor.post_process_generation(text, task=task, image_size=size)
            assert florence2.post_process_generation(text, task, size, spec) == expected, (text, size)


def test_description_with_polygons_equals_the_processors(processor, spec):
    """No task of the table parses as description_with_polygons: give one that does, on both sides."""
    processor.tasks_answer_post_processing_type["<MY_POLYGONS>"] = "description_with_polygons"
    try:
        mine = mf.Florence2Spec(**{**spec.__dict__, "answer_types": {**spec.answer_types,
                                                                     "<MY_POLYGONS>": "description_with_polygons"}})
        for text in ANSWERS["<REFERRING_EXPRESSION_SEGMENTATION>"] + ANSWERS["<OPEN_VOCABULARY_DETECTION>"]:
            expected = processor.post_process_generation(text, task="<MY_POLYGONS>", image_size=(500, 300))
            assert florence2.post_process_generation(text, "<MY_POLYGONS>", (500, 300), mine) == expected
    finally:
        del processor.tasks_answer_post_processing_type["<MY_POLYGONS>"]


def test_random_answers_parse_as_the_processor_parses_them(processor, spec):
    """Token soups (locations, words, separators, polygon and frame tokens) through every task."""
    rng = np.random.default_rng(0)
    pieces = ([f"<loc_{i}>" for i in (0, 1, 7, 500, 998, 999)] * 6
              + ["car", " red car ", "the image", "it", "café", "<sep>", "<poly>", "</poly>", "<s>", "</s>", "<pad>",
                 "<od>", "</od>", " ", "a", "x<", "<ground>"])
    tasks = list(spec.answer_types)
    for _ in range(300):
        text = "</s><s>" + "".join(rng.choice(pieces, size=rng.integers(0, 40))) + "</s>"
        size = (int(rng.integers(1, 3000)), int(rng.integers(1, 3000)))
        task = tasks[int(rng.integers(len(tasks)))]
        assert florence2.post_process_generation(text, task, size, spec) == \
            processor.post_process_generation(text, task=task, image_size=size), (task, text, size)


def test_answer_summary():
    assert florence2.answer_summary({"<CAPTION>": "a car"}) == "a car"
    assert florence2.answer_summary({"<OD>": {"bboxes": [[1, 2, 3, 4]] * 2, "labels": ["car", "door"]}}) == "car, door"
    assert florence2.answer_summary({"menu": {"nm": "x"}}) is None
    assert florence2.answer_summary(None) is None
