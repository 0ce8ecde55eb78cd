"""Every option has a range checked before anything is allocated (issue 18): a violation is an
OptionsError (exit 2 on the command line) naming the option, the value and the limit; inputs of the
wrong type are a TypeError naming the accepted types."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import edgecap.captioner as captioner_module
from edgecap import Captioner, OptionsError
from edgecap.cli import main

SAMPLE = str(Path(__file__).resolve().parent.parent / "models" / "demo" / "samples" / "scene_00000.png")


@pytest.fixture(scope="module")
def demo():
    return Captioner(backend="cpu", threads=1)


def test_more_beams_than_tokens(demo, capsys):
    vocab = demo.bundle.manifest.architecture.vocab_size
    with pytest.raises(OptionsError, match=f"num_beams 1000000 is more than this model's vocabulary of {vocab}"):
        demo.caption(SAMPLE, num_beams=1_000_000)
    assert main(["caption", SAMPLE, "--num-beams", "1000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_beams 1000000" in err


def test_decoder_state_beyond_the_memory_available(demo, monkeypatch, capsys):
    """Refused with the numbers before the allocation the kernel would kill the process for."""
    monkeypatch.setattr(captioner_module, "available_memory", lambda: 2_000_000)  # 2 MB to spare
    with pytest.raises(OptionsError) as exc:
        demo.caption([SAMPLE] * 8, num_beams=20, max_new_tokens=20)
    msg = str(exc.value)
    assert "num_beams 20 x 8 image(s)" in msg and "GB available" in msg and "lower num_beams" in msg
    assert demo.caption(SAMPLE, num_beams=1, max_new_tokens=3)  # small decodes still run
    # feeds and the stage API check too (decode knows the batch)
    with pytest.raises(OptionsError, match="num_beams 20 x 2 image"):
        demo.decode(demo.encode(demo.preprocess([SAMPLE] * 2)), captioner_module.GenerationOptions(num_beams=20))


@pytest.mark.parametrize("ids", ["-5", "-100", "4,-1"])
def test_negative_prompt_ids(demo, ids, capsys):
    assert main(["caption", SAMPLE, f"--prompt-ids={ids}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt_ids: token ids must be >= 0" in err and "internal" not in err


@pytest.mark.parametrize("kwargs,expected", [
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(batch_size=2.5), "batch_size must be an integer >= 1, got 2.5"),
    (dict(num_beams=2.5), "num_beams must be an integer, got 2.5"),
    (dict(max_new_tokens="20"), "max_new_tokens must be an integer, got '20'"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(early_stopping=1), "early_stopping must be True, False or \"never\""),
    (dict(num_return_sequences=3, num_beams=2), "num_return_sequences (3) must be between 1 and num_beams (2)"),
])
def test_bad_values_name_the_option(demo, kwargs, expected):
    with pytest.raises(OptionsError) as exc:
        demo.caption(SAMPLE, **kwargs)
    assert expected in str(exc.value)


def test_threads_bounds():
    with pytest.raises(OptionsError, match="threads must be an integer from 1 to 4096"):
        Captioner(threads=0)


def test_memory_modes_caption_alike(demo):
    with pytest.raises(OptionsError, match="memory must be one of arena, arena-no-pattern, no-arena, got 'lots'"):
        Captioner(memory="lots")
    expected = [c.token_ids for c in demo.caption([SAMPLE, SAMPLE], num_beams=2)]
    for mode in ("arena-no-pattern", "no-arena"):
        cap = Captioner(backend="cpu", threads=1, memory=mode)
        assert [c.token_ids for c in cap.caption([SAMPLE, SAMPLE], num_beams=2)] == expected


@pytest.mark.parametrize("bad,hint", [
    (None, "got NoneType"), (b"\x89PNG", "PIL.Image.open(io.BytesIO(data))"),
    (io.BytesIO(b"x"), "PIL.Image.open(file)"), ([SAMPLE, 3], "got int"), (3.5, "got float"),
])
def test_wrong_input_types(demo, bad, hint):
    with pytest.raises(TypeError) as exc:
        demo.caption(bad)
    assert "a path (str or os.PathLike), a PIL.Image.Image or an HxWx3 uint8 numpy array" in str(exc.value)
    assert hint in str(exc.value)


def test_an_array_and_a_list_still_work(demo):
    img = np.zeros((20, 30, 3), np.uint8)
    assert len(demo.caption(img)) == 1 and len(demo.caption((img, SAMPLE))) == 2
