"""Unit checks of the decoding helpers (the end-to-end parity is in test_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecap.decoding import _banned_ngram_tokens, _topk, log_softmax


@pytest.mark.parametrize("shape,k", [((2, 4 * 5000), 8), ((3, 10), 4), ((1, 2 * 300), 6)])
def test_topk_matches_a_stable_full_sort(shape, k):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 5] = x[0, 7] = x[0, 1] = 9.0  # ties inside the top-k
    x[-1, :] = np.float32(-1e9)  # an all-tied row
    x[-1, 2] = 0.0
    ref = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    assert (_topk(x, k) == ref).all()


def test_banned_ngrams():
    seq = np.array([0, 5, 6, 5])  # bigram (5, 6) seen: after 5, 6 is banned
    assert _banned_ngram_tokens(seq, 2) == [6]
    assert _banned_ngram_tokens(np.array([0, 5, 6, 7, 5, 6]), 3) == [7]
    assert _banned_ngram_tokens(np.array([0]), 3) == []


def test_log_softmax_is_normalised():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], dtype=np.float32)
    out = log_softmax(x)
    assert np.allclose(np.exp(out).sum(-1), 1.0) and np.isfinite(out[1, 0])
