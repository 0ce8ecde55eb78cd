"""Prompt encoding: the saved tokenizer's padding and truncation are off (as transformers turns them
off), and a prompt with pieces the tokenizer does not know is refused with export's message."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

import tiny

from edgecap.errors import OptionsError
from edgecap.manifest import TokenizerSpec
from edgecap.text import Detokenizer

SPEC = TokenizerSpec("tokenizer.json", skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """(tokenizer.json path, HF fast tokenizer) of a tokenizer saved padding and truncating to 4096,
    as Nougat's is."""
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("padded")
    tok = tiny.tokenizer()
    tok.backend_tokenizer.enable_padding(length=4096, pad_id=1, pad_token="<pad>")
    tok.backend_tokenizer.enable_truncation(4096)
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    saved = json.loads((out / "tokenizer.json").read_text())
    assert saved["padding"]["strategy"] == {"Fixed": 4096} and saved["truncation"]["max_length"] == 4096
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), unk_token="<unk>",
                                              pad_token="<pad>")
    return out / "tokenizer.json", hf


@pytest.mark.parametrize("text", ["w5", "w5 w6 w7", "w9  w10"])
def test_encode_prompt_matches_transformers(padded, text):
    path, hf = padded
    ids = Detokenizer(path, SPEC).encode_prompt(text)
    assert ids == hf(text, add_special_tokens=False)["input_ids"] and len(ids) < 4


def test_padding_kept_for_nothing_else(padded):
    path, _ = padded
    detok = Detokenizer(path, SPEC)
    assert detok([5, 6]) == "w5 w6"
    assert len(Tokenizer.from_file(str(path)).encode("w5").ids) == 4096  # the file itself is untouched


def test_unknown_pieces_refused_in_caption_and_export(padded, export_tiny, tmp_path, capsys):
    from edgecap.cli import main
    from edgecap_export.exporter import ExportError, ExportOptions, export

    path, _ = padded
    with pytest.raises(OptionsError) as caption_error:
        Detokenizer(path, SPEC).encode_prompt("w5 nosuch w6 nosuch")
    message = str(caption_error.value)
    assert "'nosuch'" in message and "<unk>" in message and "--prompt-ids" in message and "\n" not in message
    ckpt, bundle = export_tiny("vit", "gpt2")
    with pytest.raises(ExportError) as export_error:
        export(str(ckpt), tmp_path / "b", ExportOptions(precisions=("fp32",), prompt="w5 nosuch w6 nosuch"))
    assert str(export_error.value) == f"{ckpt}: --prompt: {message}"
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30), "white").save(image)
    capsys.readouterr()
    assert main(["caption", str(image), "--bundle", str(bundle), "--prompt", "w5 nosuch w6 nosuch"]) == 2
    err = capsys.readouterr().err
    assert err == f"edgecap: error: {message}\n"
    assert main(["caption", str(image), "--bundle", str(bundle), "--prompt-ids", "5,3", "--max-new-tokens", "2"]) == 0


def test_unigram_unknown_task_token_refused(tmp_path):
    """Donut's kind of tokenizer (Unigram, which names its unknown token by id): the issue's
    '<s_no_such_task>' ran silently as pieces with <unk> among them."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(["total cash change receipt", "what is the date"] * 5, trainers.UnigramTrainer(
        vocab_size=40, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.add_special_tokens(["<s_cord-v2>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    detok = Detokenizer(tmp_path / "tokenizer.json", SPEC)
    assert detok.unk_token == ("<unk>", 3)
    assert detok.encode_prompt("<s_cord-v2>") == [tok.token_to_id("<s_cord-v2>")]
    with pytest.raises(OptionsError, match=r"does not know \('<', '_', .*\), which would be fed as <unk>"):
        detok.encode_prompt("<s_no_such_task>")
