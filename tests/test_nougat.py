"""Nougat end to end: a Nougat-shaped checkpoint saved by the line's NougatProcessor.save_pretrained
exports, and a rendered PDF page is captioned with HF's pixels and generate()'s tokens, greedy and
with Nougat's repetition stop (written here as a transformers StoppingCriteria from its documented
behaviour); the CLI and feeds take PDFs page by page."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("pypdfium2")

import tiny  # noqa: E402
from pages import nearly_blank_page, skewed_photo, text_page, write_pdf  # noqa: E402

from edgecap import Captioner  # noqa: E402
from edgecap.cli import main  # noqa: E402
from edgecap.pdf import render_page  # noqa: E402
from edgecap.stopping import RepetitionStop, repetition_start  # noqa: E402

MAJOR = int(transformers.__version__.split(".")[0])


@pytest.fixture(scope="module")
def nougat(tmp_path_factory):
    from edgecap_export.exporter import ExportOptions, export

    root = tmp_path_factory.mktemp("nougat")
    ckpt = tiny.build_nougat(root / "checkpoint")
    return ckpt, export(str(ckpt), root / "bundle", ExportOptions(precisions=("fp32",)))


@pytest.fixture(scope="module")
def pdf_pages(tmp_path_factory):
    """A 3-page PDF (text, a photographed page, a nearly blank page) and its pages as rendered."""
    path = write_pdf(tmp_path_factory.mktemp("pdf") / "paper.pdf",
                     [text_page(seed=1), skewed_photo(2, 300, 380), nearly_blank_page()])
    return path, [render_page(str(path), page) for page in (1, 2, 3)]


# --- Nougat's stopping rule, from its description (the nougat repository's model.py) ---------------


class ReferenceRepetitionStop(transformers.StoppingCriteria):
    """StoppingCriteriaScores: per step the best processed score; the variance (unbiased) of the last
    15 of those over their count; the unbiased variance of the last 200 such values. From step 200 on,
    a variance of variances below 0.015 arms the stop (at most at 1.15 * step + 350), the next such
    step stops; a higher one disarms it. The batch ends when every row has stopped."""

    def __init__(self, threshold: float = 0.015, window: int = 200) -> None:
        self.threshold, self.window = threshold, window
        self.best: torch.Tensor | None = None
        self.spreads: torch.Tensor | None = None
        self.calls = 0
        self.armed_until: dict[int, int] = {}
        self.stopped: dict[int, bool] = {}

    def __call__(self, input_ids, scores, **kwargs):
        import warnings

        warnings.filterwarnings("ignore", message="var\\(\\): degrees of freedom")  # one value: NaN, as intended
        best = scores[-1].max(dim=1).values.float()[:, None]
        self.best = best if self.best is None else torch.cat([self.best, best], 1)[:, -15:]
        spread = (torch.var(self.best, dim=1) / self.best.shape[1])[:, None]
        self.spreads = spread if self.spreads is None else torch.cat([self.spreads, spread], 1)[:, -self.window:]
        self.calls += 1
        done = False
        if self.calls >= self.window:
            varvar = torch.var(self.spreads, dim=1)
            for row in range(varvar.shape[0]):
                if varvar[row] < self.threshold:
                    if self.armed_until.get(row, 0) > 0 and not self.stopped.get(row, False):
                        self.stopped[row] = self.armed_until[row] >= self.calls
                    else:
                        self.armed_until[row] = int(min(max(self.calls, 1) * 1.15 + 150 + self.window, 4095))
                else:
                    self.armed_until[row], self.stopped[row] = 0, False
            done = bool(self.stopped) and all(self.stopped.values())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


def reference_repetition(max_scores: np.ndarray, argmax: np.ndarray, pad: int, eos: int) -> int | None:
    """NougatModel.inference's check after generation (one row)."""
    keep = argmax != pad
    values, n = max_scores[keep].astype(np.float32), int(keep.sum())
    spreads = np.array([np.var(values[i:i + 15]) / 15 for i in range(len(values) - 15)])
    if len(spreads) < 10:
        return None
    reversed_spreads = spreads[::-1]
    tail_vars = np.array([np.var(reversed_spreads[:i + 10]) for i in range(len(spreads) - 10)][::-1])
    if (argmax == eos).any() and n + 1 < len(argmax):
        return None
    small = np.where(tail_vars < 0.045)[0]
    if len(small) > 1 and np.all(np.diff(small) < 2):
        start = int(min(max(small[0], 1) * 1.08 + 120, 4095))
        if start / n > 0.9:
            return None
        return 0 if small[0] < 30 else start
    return None


def _scripted(kind: str, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Best-score sequences that make the rule fire early, late, never, arm and disarm."""
    noise = rng.normal(0, 6.0, steps)  # spread enough that its variance of variances stays above 0.015
    if kind == "constant":
        return np.full(steps, 3.0) + rng.normal(0, 1e-3, steps)
    if kind == "late-loop":  # noisy, then a loop of period 5
        loop = np.tile(rng.normal(0, 0.3, 5), steps // 5 + 1)[:steps]
        return np.where(np.arange(steps) < steps // 2, noise, 4 + loop)
    if kind == "flicker":  # calm and noisy stretches alternate: arms, disarms
        calm = (np.arange(steps) // 37) % 2 == 0
        return np.where(calm, 2 + rng.normal(0, 0.01, steps), noise)
    return noise


@pytest.mark.parametrize("kind", ["constant", "late-loop", "flicker", "noise"])
def test_stop_rule_matches_reference_step_by_step(kind):
    rng = np.random.default_rng(len(kind))
    best = _scripted(kind, 700, rng).astype(np.float32)
    ours, ref = RepetitionStop(1), ReferenceRepetitionStop()
    fired_ours = fired_ref = None
    for t, value in enumerate(best):
        if ours.update(np.array([value], np.float32))[0] and fired_ours is None:
            fired_ours = t
        scores = torch.full((1, 4), -1e4)
        scores[0, 1] = float(value)
        if ref(torch.zeros((1, t + 2), dtype=torch.long), (scores,))[0] and fired_ref is None:
            fired_ref = t
    assert fired_ours == fired_ref
    if kind in ("constant", "late-loop"):
        assert fired_ours is not None and (kind == "constant") == (fired_ours < 210)
    if kind == "noise":
        assert fired_ours is None


@pytest.mark.parametrize("kind", ["constant", "late-loop", "flicker", "noise"])
@pytest.mark.parametrize("ends", [False, True])
def test_repetition_check_matches_reference(kind, ends):
    rng = np.random.default_rng(7 + len(kind))
    best = _scripted(kind, 600, rng).astype(np.float32)
    argmax = rng.integers(3, 50, len(best))
    if ends:
        argmax[-1] = 2
    assert repetition_start(best, argmax, 1, (2,)) == reference_repetition(best, argmax, 1, 2)
    if kind == "late-loop" and not ends:
        assert (repetition_start(best, argmax, 1, (2,)) or 0) > 0  # a "fail" page: it repeats from mid-way


# --- the checkpoint, end to end --------------------------------------------------------------------


def _hf(ckpt):
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    from edgecap_export.families import repair_loaded

    model = VisionEncoderDecoderModel.from_pretrained(ckpt, attn_implementation="eager").eval()
    repair_loaded(model)
    return model, AutoTokenizer.from_pretrained(ckpt)


def _hf_pixels(ckpt, images) -> np.ndarray:
    try:
        from transformers.models.nougat.image_processing_pil_nougat import NougatImageProcessorPil as cls
    except ImportError:
        from transformers import NougatImageProcessor as cls
    return cls.from_pretrained(ckpt)(images=list(images), return_tensors="np")["pixel_values"]


def test_checkpoint_layout_is_the_lines_own(nougat):
    ckpt, bundle = nougat
    own = "processor_config.json" if MAJOR >= 5 else "preprocessor_config.json"
    assert (ckpt / own).is_file()
    assert not (ckpt / ("preprocessor_config.json" if MAJOR >= 5 else "processor_config.json")).exists()
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    assert tok["padding"]["strategy"] == {"Fixed": 4096} and tok["truncation"]["max_length"] == 4096
    manifest = json.loads((bundle / "manifest.json").read_text())
    gen = manifest["generation"]
    assert manifest["preprocess"]["kind"] == "nougat"
    assert gen["stopping"] == "nougat" and gen["postprocess"] == "nougat" and [3] in gen["bad_words_ids"]


def test_prompt_encoding_ignores_the_saved_padding(nougat):
    ckpt, bundle = nougat
    _, hf_tok = _hf(ckpt)
    cap = Captioner(bundle, precision="fp32", backend="cpu")
    for text in ("Introduction", "# 1 Introduction\n\n", "Table 1"):
        assert cap.encode_text(text) == hf_tok(text, add_special_tokens=False)["input_ids"]
    assert len(cap.encode_text("Introduction")) < 10


@pytest.mark.parametrize("stopping", ["none", "nougat"])
def test_pdf_pages_at_parity_with_generate(nougat, pdf_pages, stopping):
    ckpt, bundle = nougat
    _, pages = pdf_pages
    cap = Captioner(bundle, precision="fp32", backend="cpu")
    pixels = cap.preprocess(pages)
    assert np.array_equal(pixels, _hf_pixels(ckpt, pages))
    model, _ = _hf(ckpt)
    gen = cap.generation_defaults
    ours = cap.caption(pages, stopping=stopping, postprocess="none")  # one batch: each page stops on its own
    for i, c in enumerate(ours):  # Nougat's stop ends a whole batch: compare page by page
        criteria = transformers.StoppingCriteriaList([ReferenceRepetitionStop()] if stopping == "nougat" else [])
        with torch.no_grad():
            ref = model.generate(pixel_values=torch.from_numpy(pixels[i:i + 1]), do_sample=False, num_beams=1,
                                 max_new_tokens=gen.max_new_tokens, bad_words_ids=[[3]], stopping_criteria=criteria,
                                 output_scores=True, return_dict_in_generate=True)
        tokens = ref.sequences[0, 1:].tolist()
        assert c.token_ids == tuple(tokens), f"page {i + 1}"
        if stopping == "nougat":
            assert len(tokens) < gen.max_new_tokens  # the stop fired, as it did in generate()
            best = torch.stack(ref.scores, 1)[0].max(-1)
            start = reference_repetition(best.values.float().numpy(), best.indices.numpy(), 1, 2)
            assert c.missing_page == (None if start is None else "fail" if start > 0 else "empty")
            assert c.text == ("[MISSING_PAGE_FAIL]" if start else "[MISSING_PAGE_EMPTY]") if start is not None else True
        else:
            assert c.missing_page is None and len(tokens) == gen.max_new_tokens


def test_stopping_is_greedy_only(nougat):
    from edgecap.errors import OptionsError

    cap = Captioner(nougat[1], precision="fp32", backend="cpu")
    with pytest.raises(OptionsError, match="decodes greedily"):
        cap.caption(text_page(), num_beams=2)
    assert len(cap.caption(text_page(), num_beams=2, stopping="none", max_new_tokens=5)[0].token_ids) == 5


def test_postprocess_option(nougat):
    from edgecap.nougat import post_process

    cap = Captioner(nougat[1], precision="fp32", backend="cpu")
    raw = cap.caption(text_page(), stopping="none", postprocess="none", max_new_tokens=60)[0]
    cleaned = cap.caption(text_page(), stopping="none", max_new_tokens=60)[0]  # the bundle's: nougat
    assert cleaned.token_ids == raw.token_ids
    assert cleaned.text == post_process(raw.text) or cleaned.missing_page == "empty"


# --- PDFs on the command line and in feeds ---------------------------------------------------------


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_caption_pdf_one_record_per_page(nougat, pdf_pages, capsys, tmp_path):
    _, bundle = nougat
    path, pages = pdf_pages
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(path.read_bytes()[:200])  # truncated: pdfium cannot read it
    code = main(["caption", str(path), str(bad), f"{path}#page=2", "--bundle", str(bundle), "--json",
                 "--max-new-tokens", "250"])
    out, err = capsys.readouterr()
    assert code == 1
    records = _json_lines(out)
    assert [r["path"] for r in records] == [f"{path}#page={n}" for n in (1, 2, 3)] + [str(bad), f"{path}#page=2"]
    assert "error" in records[3] and "not a readable PDF" in records[3]["error"]
    assert err.count(str(bad)) == 1 and err.count("\n") == 1
    expected = Captioner(bundle, precision="fp32", backend="cpu").caption(pages, max_new_tokens=250)
    for n, (record, c) in enumerate(zip(records[:3], expected), start=1):
        assert record["token_ids"] == list(c.token_ids)
        mark = f"[MISSING_PAGE_{c.missing_page.upper()}:{n}]" if c.missing_page else c.text
        assert record["caption"] == mark  # a page mark numbered as Nougat's predict.py numbers it
    assert records[4]["token_ids"] == records[1]["token_ids"]


def test_caption_pdf_without_pypdfium2_says_how_to_install(nougat, pdf_pages, capsys, monkeypatch):
    path, _ = pdf_pages
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # import fails as it does where it is not installed
    code = main(["caption", str(path), "--bundle", str(nougat[1])])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.strip().startswith(f"edgecap: {path}: PDF input needs pypdfium2: pip install ")
    assert "[pdf]" in err and err.count("\n") == 1


def test_feed_takes_a_pdf_page_by_page(nougat, pdf_pages, tmp_path, capsys):
    path, pages = pdf_pages
    out = tmp_path / "pages.jsonl"
    code = main(["feed", str(path), "--out", str(out), "--bundle", str(nougat[1]), "--quiet", "--max-new-tokens", "30",
                 "--stopping", "none", "--postprocess", "none"])
    assert code == 0, capsys.readouterr().err
    records = _json_lines(out.read_text())
    assert [r["frame"] for r in records] == [0, 1, 2] and not any(r["repeat"] for r in records)
    expected = Captioner(nougat[1], precision="fp32", backend="cpu").caption(
        pages, max_new_tokens=30, stopping="none", postprocess="none")
    assert [r["caption"] for r in records] == [c.text for c in expected]
