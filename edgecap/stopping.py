"""Stopping rules beyond eos and max_new_tokens: Nougat's repetition stop.

A Nougat model that loses track of a page repeats itself until max_length (4096 tokens: minutes of
decoding). Nougat's own inference (the nougat repository's ``model.py``) therefore watches the
decoder's confidence, in two parts, both reproduced here for one image at a time:

* **during generation**, ``StoppingCriteriaScores``: per step, the highest processed score (logit
  after the logits processors); the variance of the last 15 of them divided by their count; the
  (unbiased) variance of the last 200 of those. Once 200 steps are done, a step whose variance of
  variances is below 0.015 arms the stop, and the next such step ends the generation (the token of
  that step is kept). A step above the threshold disarms it.
* **after generation**, ``NougatModel.inference``'s repetition check over all the steps' highest
  scores: windows of 15, their variances (population, divided by 15), the variance of each suffix of
  at least 10 of those; where those fall below 0.045 from one point on, the output repeats from about
  there (``repetition_start``), and the page is reported as missing (``[MISSING_PAGE_FAIL]``, or
  ``[MISSING_PAGE_EMPTY]`` when it repeats from the start).

Nougat decodes a batch together and stops it when every page has stopped, so its output for a page
depends on the pages beside it; here each image stops on its own scores, which is Nougat's result
for that page decoded alone (batch size 1), in any batch.
"""

from __future__ import annotations

import numpy as np

NOUGAT = "nougat"
STOPPING_RULES = (NOUGAT,)  # the values of GenerationOptions.stopping / Generation.stopping

# StoppingCriteriaScores' defaults (threshold, window) and RunningVarTorch's default length
THRESHOLD, WINDOW, SCORE_WINDOW = 0.015, 200, 15
# NougatModel.inference's repetition check
REPEAT_THRESHOLD, REPEAT_MIN_LEN, REPEAT_LIMIT = 0.045, 120, 4095


def _unbiased_var(window: np.ndarray, count: int) -> np.ndarray:
    """torch.var(x, 1) over the first `count` columns (NaN for one value, as torch gives)."""
    if count < 2:
        return np.full(window.shape[0], np.nan, dtype=np.float32)
    return window[:, :count].astype(np.float64).var(axis=1, ddof=1).astype(np.float32)


class RepetitionStop:
    """StoppingCriteriaScores, row by row: `update` per generated token says which rows stop there."""

    def __init__(self, rows: int, threshold: float = THRESHOLD, window: int = WINDOW) -> None:
        self.threshold, self.window = threshold, window
        self.maxes = np.zeros((rows, SCORE_WINDOW), dtype=np.float32)
        self.variances = np.zeros((rows, window), dtype=np.float32)
        self.n_maxes = self.n_variances = self.size = 0
        self.stop_at = np.zeros(rows, dtype=np.int64)
        self.stopped = np.zeros(rows, dtype=bool)

    @staticmethod
    def _push(buffer: np.ndarray, count: int, values: np.ndarray) -> int:
        if count < buffer.shape[1]:
            buffer[:, count] = values
            return count + 1
        buffer[:, :-1] = buffer[:, 1:]
        buffer[:, -1] = values
        return count

    def update(self, best_scores: np.ndarray) -> np.ndarray:
        """Feed one step's highest processed score per row (float32 [rows]); returns the rows whose
        stop fires at this step."""
        self.n_maxes = self._push(self.maxes, self.n_maxes, best_scores)
        spread = _unbiased_var(self.maxes, self.n_maxes) / np.float32(self.n_maxes)
        self.n_variances = self._push(self.variances, self.n_variances, spread)
        self.size += 1
        if self.size < self.window:
            return np.zeros(len(self.stopped), dtype=bool)
        with np.errstate(invalid="ignore"):  # the first variance is NaN until it leaves the window
            low = _unbiased_var(self.variances, self.n_variances) < self.threshold
        was = self.stopped.copy()
        armed = low & (self.stop_at > 0) & ~self.stopped
        self.stopped = np.where(armed, self.stop_at >= self.size, np.where(low, self.stopped, False))
        rearm = low & ~armed
        self.stop_at = np.where(rearm, int(min(max(self.size, 1) * 1.15 + 150 + self.window, REPEAT_LIMIT)),
                                np.where(low, self.stop_at, 0))
        return self.stopped & ~was


def repetition_start(max_scores: np.ndarray, argmax: np.ndarray, pad: int | None, eos: tuple[int, ...]) -> int | None:
    """NougatModel.inference's check of one finished output: where its repetition starts in the
    sequence (0: from the start, an empty or foreign page), or None when it does not repeat.

    `max_scores`/`argmax`: per generated step, the highest processed score (float32) and its token.
    """
    keep = argmax != pad if pad is not None else np.ones(len(argmax), dtype=bool)
    values = max_scores[keep].astype(np.float32)
    n = int(keep.sum())
    # the same numpy operations in the same order as Nougat (float32 sums depend on the order)
    spreads = np.array([np.var(values[i:i + SCORE_WINDOW]) / SCORE_WINDOW
                        for i in range(len(values) - SCORE_WINDOW)])
    if len(spreads) < 10:
        return None
    # the variance of every suffix of at least 10 spreads but the whole (taken reversed, as Nougat
    # does), in order of where the suffix starts
    backwards = spreads[::-1]
    tails = np.array([np.var(backwards[:k]) for k in range(10, len(spreads))][::-1])
    if np.isin(argmax, eos).any() and n + 1 < len(argmax):
        return None  # the output ended: likely no repetition
    small = np.flatnonzero(tails < REPEAT_THRESHOLD)
    if len(small) < 2 or not np.all(np.diff(small) < 2):
        return None
    start = int(min(max(int(small[0]), 1) * 1.08 + REPEAT_MIN_LEN, REPEAT_LIMIT))
    if start / n > 0.9:  # at most the last bit repeats
        return None
    return 0 if small[0] < 30 else start
