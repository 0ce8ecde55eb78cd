"""edgecap.donut: token2json parity with DonutProcessor.token2json, added vocab and decoding from tokenizer.json."""

from __future__ import annotations

import random
import re
import sys

import pytest

from edgecap.donut import sequence_to_json, token2json
from edgecap.manifest import Generation, TokenizerSpec
from edgecap.text import Detokenizer

TAGS = ["<s_cord-v2>", "<s_menu>", "</s_menu>", "<s_nm>", "</s_nm>", "<s_cnt>", "</s_cnt>", "<s_price>", "</s_price>",
        "<s_total>", "</s_total>", "<s_class>", "</s_class>", "<sep/>", "<yes/>", "<no/>"]


@pytest.fixture(scope="module")
def donut(tmp_path_factory):
    """A tiny Unigram/Metaspace tokenizer (Donut's XLM-R kind) with Donut's tags as special tokens.

    Returns (HF tokenizer, DonutProcessor, edgecap Detokenizer reading the saved tokenizer.json).
    """
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import DonutProcessor, PreTrainedTokenizerFast

    try:
        from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil as image_processor
    except ImportError:
        from transformers import DonutImageProcessor as image_processor

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = ["Latte 2 4,500 Bagel total cash change", "what is the date? 12/03/2021", "hello world receipt"] * 5
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=60, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": TAGS})
    hf.add_tokens(["<plain/>"])  # an added token that is not special
    out = tmp_path_factory.mktemp("donut-tok")
    hf.save_pretrained(out)
    spec = TokenizerSpec("tokenizer.json", skip_special_tokens=True,
                         clean_up_tokenization_spaces=bool(hf.clean_up_tokenization_spaces))
    processor = DonutProcessor(image_processor=image_processor(), tokenizer=hf)
    return hf, processor, Detokenizer(out / "tokenizer.json", spec)


SEQUENCES = [
    "<s_menu><s_nm>Latte</s_nm><s_cnt>2</s_cnt><sep/><s_nm>Bagel</s_nm><s_price>4,500</s_price></s_menu>"
    "<s_total><s_price>9,000</s_price></s_total>",
    "<s_menu><s_nm> Latte </s_nm></s_menu>",  # one group: a dict, not a list
    "<s_nm>a<sep/>b<sep/> c </s_nm>",  # leaf list
    "<s_class><yes/></s_class>", "<s_class><no/><sep/><yes/><sep/><plain/><sep/><maybe/></s_class>",  # categories
    "<s_menu><s_nm>Latte</s_nm>",  # unclosed outer tag
    "<s_menu><s_nm>Latte</s_menu>",  # unclosed inner tag
    "hello world", "", "   ", "<s_", "abc <s_foo", "</s_nm>",
    "<s_a>1</s_a><sep/><s_a>2</s_a><sep/>", "<s_a>1</s_a><sep/>junk<sep/><s_b>3</s_b>",  # top-level groups
    "<S_Nm>x</s_NM><s_nm>y</S_nm>",  # tags are case-insensitive
    "</s_a><s_a>x</s_a>", "<s_a>x</s_a></s_a><s_a>y</s_a>",  # stray end tags
    "<s_a.b(>x</s_a.b(>", "<s_a*>x</s_a*>", "<s_>empty key</s_>",  # regex characters in keys
    "<s_menu><s_nm></s_nm></s_menu>", "<s_menu><s_x></s_y></s_menu>", "<s_menu></s_menu>",
    "<s_a>line1\nline2</s_a>",  # content spans lines
    "<s_question>what is the date?</s_question><s_answer>12/03/2021</s_answer>",
    "<s_a><s_b><s_c><s_d>deep</s_d></s_c></s_b><sep/><s_b>x</s_b></s_a>",
    "<s_a><s_b>1</s_b><sep/><s_b>2</s_b></s_a><sep/><s_a><s_b>3</s_b></s_a>",
    "text before <s_a>x</s_a> text after",
]


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_token2json_matches_transformers(donut, sequence):
    _, processor, detok = donut
    assert token2json(sequence, detok.added_vocab) == processor.token2json(sequence)
    assert token2json(sequence, detok.added_vocab, is_inner_value=True) == processor.token2json(
        sequence, is_inner_value=True)


def test_token2json_matches_transformers_on_random_sequences(donut):
    _, processor, detok = donut
    pieces = ["<s_a>", "</s_a>", "<S_A>", "<s_b>", "</s_b>", "<sep/>", "<yes/>", "<plain/>", "x", "y z", " ",
              "\n", "<s_", ">", "</s_", "<"]
    rng = random.Random(0)
    for _ in range(600):
        sequence = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert token2json(sequence, detok.added_vocab) == processor.token2json(sequence), sequence


def test_categories_need_the_added_vocab(donut):
    assert token2json("<s_class><yes/></s_class>", {"<yes/>": 45}) == {"class": "yes"}
    assert token2json("<s_class><yes/></s_class>") == {"class": "<yes/>"}  # not an added token: kept as text


def test_many_groups_do_not_hit_the_recursion_limit(donut):
    _, processor, detok = donut
    few = "<sep/>".join(f"<s_a>{i}</s_a>" for i in range(200))
    assert token2json(few, detok.added_vocab) == processor.token2json(few)  # transformers recurses per group
    many = "<sep/>".join(f"<s_a>{i}</s_a>" for i in range(3 * sys.getrecursionlimit()))
    assert token2json(many) == [{"a": str(i)} for i in range(3 * sys.getrecursionlimit())]


def test_added_vocab_matches_get_added_vocab(donut):
    hf, _, detok = donut
    assert list(detok.added_vocab.items()) == list(hf.get_added_vocab().items())
    assert {"<sep/>", "<yes/>", "<plain/>", "</s>"} <= set(detok.added_vocab)


def test_decoding_with_and_without_special_tokens_matches(donut):
    hf, _, detok = donut
    ids = hf(SEQUENCES[0] + "<yes/> what is <plain/>", add_special_tokens=False).input_ids + [hf.eos_token_id]
    assert detok(ids) == hf.decode(ids, skip_special_tokens=True)
    assert detok(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)
    assert "<s_menu>" in detok(ids, skip_special_tokens=False) and "<s_menu>" not in detok(ids)


def test_sequence_to_json_follows_donuts_recipe(donut):
    """Against the transformers recipe on the full sequence (prompt included), as Donut's docs do it."""
    hf, processor, detok = donut
    prompt = hf("<s_cord-v2>", add_special_tokens=False).input_ids
    answer = hf(SEQUENCES[0], add_special_tokens=False).input_ids + [hf.eos_token_id, hf.pad_token_id]
    full = hf.batch_decode([prompt + answer])[0]
    full = full.replace(hf.eos_token, "").replace(hf.pad_token, "")
    expected = processor.token2json(re.sub(r"<.*?>", "", full, count=1).strip())
    generation = Generation(decoder_start_token_id=prompt[0], bos_token_id=hf.bos_token_id,
                            eos_token_ids=[hf.eos_token_id], pad_token_id=hf.pad_token_id, max_new_tokens=64,
                            min_new_tokens=0, num_beams=1, length_penalty=1.0, early_stopping=False,
                            no_repeat_ngram_size=0, num_return_sequences=1)
    result = sequence_to_json(answer, detok, generation)
    assert result == expected and result["menu"][1]["price"] == "4,500"

