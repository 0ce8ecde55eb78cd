"""Export's verification (issue 19): an fp32 gate no stricter than PyTorch is with itself, and
verification on a bounded number of tokens per image."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgecap import manifest as mf
from edgecap.cli import main
from edgecap_export import verify
from edgecap_export.exporter import ExportOptions, export

import docmodels
import tiny


def test_large_logits_pass_against_float64(tmp_path):
    """A Donut-shaped model with large weights (init std 0.3): its logits differ from PyTorch fp32 by
    more than the absolute 1e-3, and PyTorch fp32 itself is that far from float64; the graphs are no
    noisier, so they pass."""
    ckpt = docmodels.donut_like(tmp_path / "ckpt", init_std=0.3)
    bundle = export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32",), verify_images=2))
    v = mf.Manifest.from_json((bundle / "manifest.json").read_text()).verification["fp32"]
    assert v.max_logit_diff > 1e-3, "the model should exercise the float64 path"
    assert v.fp64_error is not None and v.fp64_pytorch_error is not None
    assert v.fp64_rms <= verify.NOISE_FACTOR * v.fp64_pytorch_rms and v.token_agreement == 1.0
    assert v.verified_steps == verify.VERIFY_STEPS


@pytest.mark.parametrize("diff,ours,torch_err,tokens,verdict", [
    (5e-4, None, None, 1.0, None),
    (3e-3, None, None, 1.0, "max logit difference 3.00e-03 > --max-logit-diff 0.001"),
    (3e-3, 2e-3, 4e-3, 1.0, None),
    (3e-3, 7e-3, 4e-3, 1.0, None),
    (3e-3, 9e-3, 4e-3, 1.0, "more than 2x PyTorch fp32's own"),
    (1e-4, None, None, 0.9, "greedy tokens agree with PyTorch's on 90.0%"),
    (1e-1, 5e-2, 4e-2, 0.9, "rounding alone flips tokens"),
])
def test_fp32_rule(diff, ours, torch_err, tokens, verdict):
    extra = {} if ours is None else dict(fp64_error=ours * 3, fp64_pytorch_error=torch_err * 3, fp64_rms=ours,
                                         fp64_pytorch_rms=torch_err)
    report = mf.Verification("pytorch", 4, diff, tokens, 1.0, **extra)
    problem = verify.fp32_problem(report, 1e-3)
    assert (problem is None) if verdict is None else (verdict in problem)


def test_page_sized_images_are_verified_without_arenas():
    # export keeps several sessions alive at once; at page sizes their arenas alone exhausted 24 GiB
    assert verify.session_memory(np.zeros((1, 3, 384, 384), np.float32)) == "arena"
    assert verify.session_memory(np.zeros((1, 3, 1024, 1024), np.float32)) == "arena"
    assert verify.session_memory(np.zeros((1, 3, 2560, 1920), np.float32)) == "no-arena"


def test_verification_decodes_a_bounded_number_of_tokens(tmp_path):
    """A model whose outputs run to 200 tokens is verified on 48 per image (past the cache's growth
    to 64 slots), with the number in the manifest; --verify-steps 0 verifies everything."""
    ckpt = tiny.build(tmp_path / "ckpt", "vit", "gpt2", max_new_tokens=200, n_positions=256)
    bundle = export(str(ckpt), tmp_path / "b48", ExportOptions(precisions=("fp32", "int8"), min_agreement=0))
    man = mf.Manifest.from_json((bundle / "manifest.json").read_text())
    assert man.generation.max_new_tokens == 200
    assert {p: v.verified_steps for p, v in man.verification.items()} == {"fp32": 48, "int8": 48}
    assert man.verification["int8"].steps <= 32 * 48
    full = export(str(ckpt), tmp_path / "ball", ExportOptions(precisions=("fp32",), verify_steps=0))
    assert mf.Manifest.from_json((full / "manifest.json").read_text()).verification["fp32"].verified_steps == 200


@pytest.mark.parametrize("flag,value,message", [
    ("--max-logit-diff", "0", "--max-logit-diff must be a positive number"),
    ("--verify-steps", "-1", "--verify-steps must be >= 0"),
    ("--verify-images", "0", "--verify-images must be >= 1"),
])
def test_export_option_ranges(tmp_path, capsys, flag, value, message):
    ckpt = tiny.build(tmp_path / "ckpt", "vit", "gpt2")
    assert main(["export", str(ckpt), str(tmp_path / "out"), flag, value]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_int8_that_fails_the_gate_is_judged_again_with_attention_projections_in_fp32(tmp_path):
    """A decisive Donut-shaped model whose int8 decoder loses agreement in the self-attention's q/k/v:
    export retries int8 with those products in fp32 and writes it if that passes the gate."""
    from edgecap_export.graphbuilder import INT8_SENSITIVE_PARTS

    ckpt = docmodels.donut_like(tmp_path / "ckpt", init_std=0.3)
    agreement = {}
    for parts in ((), INT8_SENSITIVE_PARTS):
        out = export(str(ckpt), tmp_path / f"probe{len(parts)}", ExportOptions(
            precisions=("fp32", "int8"), min_agreement=0.0, verify_images=1, int8_fp32_parts=parts))
        agreement[parts] = mf.Manifest.from_json((out / "manifest.json").read_text()).verification["int8"].decisive_agreement
    assert agreement[INT8_SENSITIVE_PARTS] > agreement[()], agreement
    threshold = (agreement[()] + agreement[INT8_SENSITIVE_PARTS]) / 2
    bundle = export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32", "int8"), min_agreement=threshold,
                                                                  verify_images=1))
    v = mf.Manifest.from_json((bundle / "manifest.json").read_text()).verification["int8"]
    assert v.fp32_parts == list(INT8_SENSITIVE_PARTS) and v.decisive_agreement >= threshold


def test_int8_is_not_rebuilt_when_nothing_was_decisive(tmp_path, caplog):
    """A model whose fp32 is never decisive on the evaluation images (random weights at a trained model's
    scale) leaves the int8 gate nothing to measure: keeping products in fp32 cannot change that verdict,
    so export does not spend a second int8 build and judgement on it."""
    ckpt = docmodels.manga_like(tmp_path / "ckpt", image=32, hidden=64, encoder_layers=1, decoder_hidden=64,
                                vocab=256, max_length=20, init_std=0.02)
    with caplog.at_level(logging.INFO):
        out = export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32", "int8"), verify_images=1,
                                                                   allow_partial=True))
    man = mf.Manifest.from_json((out / "manifest.json").read_text())
    assert sorted(man.graphs) == ["fp32"]
    assert "never decisive" in caplog.text and "trying int8 with" not in caplog.text
