"""Greedy and beam-search decoding with the semantics of transformers `generate()`.

Pure numpy over a `StepModel`, so it runs on any backend and is testable without one.
Beam search follows transformers' vectorised implementation (>= 4.50) step for step, in float32
like it, so the same candidates win: top-k over `num_beams * vocab` accumulated log-probs, keep
`max(2, 1 + n_eos) * num_beams` candidates, length-normalised finished hypotheses, the same
early-stopping heuristics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from .options import ResolvedOptions
from .stopping import NOUGAT, RepetitionStop, repetition_start

_NEG = np.float32(-1.0e9)


class StepModel(Protocol):
    """A decoder that consumes one token per row and keeps its own cache."""

    def begin(self, rows: np.ndarray, max_steps: int) -> None:
        """Start a generation; row i decodes for encoded image rows[i]."""

    def step(self, tokens: np.ndarray, step: int) -> np.ndarray:
        """Feed tokens [rows] at position `step`; return next-token logits [rows, vocab] float32."""

    def reorder(self, src_rows: np.ndarray) -> None:
        """Beam search: row i's cache becomes the cache of row src_rows[i]."""

    def cross_attentions(self) -> np.ndarray:
        """Attention-emitting decoders only (asked for with `attentions=True`): the cross-attention
        of the last step, [rows, ...] over the encoder's tokens, a copy the caller may keep."""


@dataclass(frozen=True)
class Hypothesis:
    token_ids: tuple[int, ...]  # generated ids without the start token, up to and including eos
    score: float
    # Per token, its log-probability after the logits processors, from the beam that chose it:
    # transformers' compute_transition_scores (normalize_logits=True for greedy).
    token_scores: tuple[float, ...] = ()
    # Per token, the decoder's cross-attention when it chose that token (when asked for).
    cross_attentions: np.ndarray | None = field(default=None, repr=False, compare=False)
    # stopping="nougat" only: where Nougat's repetition check says the output starts repeating
    # (edgecap.stopping.repetition_start; 0: from the start), None when it does not repeat.
    repetition_start: int | None = None


def confidence(token_scores: Sequence[float]) -> float:
    """exp(mean token log-probability): the geometric mean of the chosen tokens' probabilities, in
    (0, 1]; comparable across lengths (a sum is not); 0.0 for no tokens."""
    if len(token_scores) == 0:
        return 0.0
    return math.exp(math.fsum(token_scores) / len(token_scores))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def _argmax_logprob(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, its log-probability) per row, without materialising the whole log-softmax: at the
    argmax the shifted score is 0, so its log-prob is -log(sum(exp(x - max))) (same float ops)."""
    best = scores.argmax(axis=-1)
    shifted = scores - scores[np.arange(len(best)), best][:, None]
    np.exp(shifted, out=shifted)
    return best, -np.log(shifted.sum(axis=-1))


def _banned_ngram_tokens(seq: np.ndarray, n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `seq` (transformers' NoRepeatNGramLogitsProcessor)."""
    cur_len = len(seq)
    if cur_len + 1 < n:
        return []
    toks = seq.tolist()
    prefix = tuple(toks[cur_len + 1 - n :])
    return [toks[i + n - 1] for i in range(cur_len - n + 1) if tuple(toks[i : i + n - 1]) == prefix]


def _apply_bad_words(scores: np.ndarray, seqs: np.ndarray, bad_words: tuple[tuple[int, ...], ...]) -> None:
    """transformers' NoBadWordsLogitsProcessor: a banned sequence's last token is forbidden where the
    sequence so far ends with the rest of it (single tokens: always)."""
    for seq in bad_words:
        if len(seq) == 1:
            scores[:, seq[0]] = -np.inf
            continue
        prefix = np.asarray(seq[:-1], dtype=seqs.dtype)
        if len(prefix) > seqs.shape[1]:
            continue
        rows = (seqs[:, seqs.shape[1] - len(prefix):] == prefix).all(axis=1)
        scores[rows, seq[-1]] = -np.inf


def process_scores(scores: np.ndarray, seqs: np.ndarray, opts: ResolvedOptions) -> np.ndarray:
    """Apply the logits processors `generate()` builds from these options (in place).

    seqs: [rows, cur_len] including the decoder start token and any prompt.
    """
    new_tokens = seqs.shape[1] - opts.prompt_len
    if opts.no_repeat_ngram_size > 0:
        for r in range(seqs.shape[0]):
            banned = _banned_ngram_tokens(seqs[r], opts.no_repeat_ngram_size)
            if banned:
                scores[r, banned] = -np.inf
    if opts.bad_words_ids:
        _apply_bad_words(scores, seqs, opts.bad_words_ids)
    if new_tokens < opts.min_new_tokens and opts.eos_token_ids:
        scores[:, list(opts.eos_token_ids)] = -np.inf
    # forced tokens come last in transformers' processor list and overwrite every score; the forced
    # BOS only when the decoder input is the start token alone (ForcedBOSTokenLogitsProcessor: cur_len 1)
    if opts.forced_bos_token_id is not None and seqs.shape[1] == 1:
        scores[:] = -np.inf
        scores[:, opts.forced_bos_token_id] = 0.0
    if opts.forced_eos_token_ids and new_tokens == opts.max_new_tokens - 1:
        scores[:] = -np.inf
        scores[:, list(opts.forced_eos_token_ids)] = 0.0
    return scores


def greedy(model: StepModel, batch: int, opts: ResolvedOptions, attentions: bool = False) -> list[list[Hypothesis]]:
    """Greedy decoding; score = sum of the chosen tokens' log-probabilities (after processors)."""
    eos = np.array(opts.eos_token_ids, dtype=np.int64)
    pad = opts.pad_token_id if opts.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
    p = opts.prompt_len
    model.begin(np.arange(batch), p + opts.max_new_tokens - 1)
    seqs = np.full((batch, p + opts.max_new_tokens), pad, dtype=np.int64)
    seqs[:, :p] = opts.decoder_input_ids
    prefill(model, seqs, p)
    lengths = np.zeros(batch, dtype=np.int64)
    scores = np.zeros(batch, dtype=np.float32)
    token_scores = np.zeros((batch, opts.max_new_tokens), dtype=np.float32)
    steps_attention: list[np.ndarray] = []
    unfinished = np.ones(batch, dtype=bool)
    # Nougat's repetition stop watches each step's best processed score (edgecap/stopping.py)
    stop = RepetitionStop(batch) if opts.stopping == NOUGAT else None
    best_scores = np.zeros((batch, opts.max_new_tokens), dtype=np.float32) if stop else None
    best_ids = np.zeros((batch, opts.max_new_tokens), dtype=np.int64) if stop else None
    for t in range(p - 1, p - 1 + opts.max_new_tokens):
        logits = model.step(seqs[:, t], t)  # the decoder's own copy: processed in place
        if attentions:
            steps_attention.append(model.cross_attentions())
        processed = process_scores(logits.astype(np.float32, copy=False), seqs[:, : t + 1], opts)
        nxt, logp = _argmax_logprob(processed)
        if stop is not None:
            best_ids[:, t + 1 - p] = nxt
            best_scores[:, t + 1 - p] = processed[np.arange(batch), nxt]
            fired = stop.update(best_scores[:, t + 1 - p])
        nxt = np.where(unfinished, nxt, pad)
        seqs[:, t + 1] = nxt
        scores += np.where(unfinished, logp, 0).astype(np.float32)
        token_scores[:, t + 1 - p] = logp
        lengths += unfinished
        unfinished &= ~np.isin(nxt, eos)
        if stop is not None:  # generate() checks its criteria after appending the token: it is kept
            unfinished &= ~fired
        if not unfinished.any():
            break
    out = []
    for b in range(batch):
        n = int(lengths[b])
        att = np.stack([a[b] for a in steps_attention[:n]]) if attentions else None
        repeats = (repetition_start(best_scores[b, :n], best_ids[b, :n], opts.pad_token_id, opts.eos_token_ids)
                   if stop is not None else None)
        out.append([Hypothesis(tuple(seqs[b, p : p + n].tolist()), float(scores[b]),
                               tuple(token_scores[b, :n].tolist()), att, repeats)])
    return out


def prefill(model: StepModel, seqs: np.ndarray, prompt_len: int) -> None:
    """Feed the start token and the prompt but its last token, whose logits start the generation.
    One token per step through the same step graph: a prompt is short next to the output, and a
    second (prefill) graph would double what a bundle must hold and verify."""
    for t in range(prompt_len - 1):
        model.step(seqs[:, t], t)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest along the last axis, largest first; ties go to the lower index.

    argpartition first: a full sort of num_beams x 50k scores per step costs ~10 ms, the partition
    a tenth of that.
    """
    n = x.shape[-1]
    if k >= n // 4:
        return np.argsort(-x, axis=-1, kind="stable")[..., :k]
    part = np.argpartition(-x, k - 1, axis=-1)[..., :k]
    # the k-th value may be tied with values outside the partition: take every tied index too
    kth = np.take_along_axis(x, part, axis=-1).min(axis=-1, keepdims=True)
    out = np.empty(x.shape[:-1] + (k,), dtype=np.int64)
    for row in np.ndindex(*x.shape[:-1]):
        cand = np.flatnonzero(x[row] >= kth[row])
        order = np.lexsort((cand, -x[row][cand]))  # by value desc, then index asc
        out[row] = cand[order[:k]]
    return out


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[b, idx[b, j], ...] for arrays shaped [batch, beams, ...]."""
    while idx.ndim < a.ndim:
        idx = idx[..., None]
    return np.take_along_axis(a, idx, axis=1)


def beam_search(model: StepModel, batch: int, opts: ResolvedOptions, attentions: bool = False) -> list[list[Hypothesis]]:
    nb = opts.num_beams
    eos = np.array(opts.eos_token_ids, dtype=np.int64)
    keep = max(2, 1 + len(eos)) * nb
    top_mask = np.arange(keep) < nb
    prompt_len = opts.prompt_len
    max_length = prompt_len + opts.max_new_tokens
    lp, early = opts.length_penalty, opts.early_stopping
    fill = opts.pad_token_id if opts.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)

    model.begin(np.repeat(np.arange(batch), nb), max_length - 1)
    running = np.full((batch, nb, max_length), fill, dtype=np.int64)
    running[:, :, :prompt_len] = opts.decoder_input_ids
    prefill(model, running.reshape(batch * nb, max_length), prompt_len)
    running_scores = np.zeros((batch, nb), dtype=np.float32)
    running_scores[:, 1:] = _NEG
    sequences = running.copy()
    seq_lens = np.zeros((batch, nb), dtype=np.int64)  # generated tokens of each finished hypothesis
    # Per beam and generated token: its processed log-prob and the decoder row that chose it
    # (transformers' beam_indices), carried through every reorder like the tokens themselves.
    running_tok = np.zeros((batch, nb, opts.max_new_tokens), dtype=np.float32)
    running_rows = np.zeros((batch, nb, opts.max_new_tokens), dtype=np.int64)
    tok_scores, tok_rows = running_tok.copy(), running_rows.copy()
    steps_attention: list[np.ndarray] = []
    beam_scores = np.full((batch, nb), _NEG, dtype=np.float32)
    finished = np.zeros((batch, nb), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)
    offsets = (np.arange(batch) * nb)[:, None]
    cur_len = prompt_len

    while True:
        flat = running[:, :, :cur_len].reshape(batch * nb, cur_len)
        logits = model.step(flat[:, -1], cur_len - 1)
        if attentions:
            steps_attention.append(model.cross_attentions())
        logp = process_scores(log_softmax(logits), flat, opts)
        vocab = logp.shape[-1]
        acc = (logp.reshape(batch, nb, vocab) + running_scores[:, :, None]).reshape(batch, nb * vocab)

        idx = _topk(acc, keep)
        topk_lp = np.take_along_axis(acc, idx, axis=1)
        src_beam, ids = idx // vocab, idx % vocab
        topk_seqs = _take(running, src_beam)
        topk_seqs[:, :, cur_len] = ids
        new = cur_len - prompt_len
        topk_tok, topk_rows = _take(running_tok, src_beam), _take(running_rows, src_beam)
        topk_tok[:, :, new] = np.take_along_axis(logp.reshape(batch, nb * vocab), idx, axis=1)
        topk_rows[:, :, new] = src_beam + offsets
        hits = np.isin(ids, eos) | (cur_len + 1 >= max_length)

        # the best candidates that did not stop continue as running beams
        run_lp = topk_lp + hits.astype(np.float32) * _NEG
        nxt = _topk(run_lp, nb)
        running = _take(topk_seqs, nxt)
        running_tok, running_rows = _take(topk_tok, nxt), _take(topk_rows, nxt)
        running_scores = np.take_along_axis(run_lp, nxt, axis=1)
        src_rows = (np.take_along_axis(src_beam, nxt, axis=1) + offsets).reshape(-1)

        # candidates that stopped among the top num_beams join the finished hypotheses
        just_finished = hits & top_mask[None, :]
        norm = topk_lp / np.float32((cur_len + 1 - prompt_len) ** lp)
        full = finished.all(axis=-1, keepdims=True) & (early is True)
        norm = norm + full.astype(np.float32) * _NEG
        norm = norm + (~improvable).astype(np.float32) * _NEG
        norm = norm + (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([beam_scores, norm], axis=1)
        sel = _topk(merged_scores, nb)
        sequences = _take(np.concatenate([sequences, topk_seqs], axis=1), sel)
        tok_scores = _take(np.concatenate([tok_scores, topk_tok], axis=1), sel)
        tok_rows = _take(np.concatenate([tok_rows, topk_rows], axis=1), sel)
        seq_lens = _take(np.concatenate([seq_lens, np.full((batch, keep), cur_len + 1 - prompt_len)], axis=1), sel)
        finished = _take(np.concatenate([finished, just_finished], axis=1), sel)
        beam_scores = np.take_along_axis(merged_scores, sel, axis=1)

        cur_len += 1
        # can a running beam still beat the worst finished one?
        if early == "never" and lp > 0.0:
            best_len = max_length - prompt_len
        else:
            best_len = cur_len - prompt_len
        best_running = running_scores[:, :1] / np.float32(best_len**lp)
        worst_finished = np.where(finished, beam_scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)
        keep_going = improvable.any() and not (finished.all() and early is True) and not hits.all()
        if not keep_going:
            break
        model.reorder(src_rows)

    out = []
    for b in range(batch):
        hyps = []
        for j in range(opts.num_return_sequences):
            n = int(seq_lens[b, j])
            rows = tok_rows[b, j, :n]
            att = np.stack([steps_attention[t][r] for t, r in enumerate(rows)]) if attentions else None
            hyps.append(Hypothesis(tuple(sequences[b, j, prompt_len : prompt_len + n].tolist()), float(beam_scores[b, j]),
                                   tuple(tok_scores[b, j, :n].tolist()), att))
        out.append(hyps)
    return out


def decode(model: StepModel, batch: int, opts: ResolvedOptions, attentions: bool = False) -> list[list[Hypothesis]]:
    """`num_return_sequences` hypotheses per image, best first; with `attentions`, each with the
    cross-attention of every token (the model must be an attention-emitting one)."""
    if opts.num_beams == 1:
        return greedy(model, batch, opts, attentions)
    return beam_search(model, batch, opts, attentions)
