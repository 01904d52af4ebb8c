"""Turning logits into what callers asked for: probabilities, top-k, sampled tokens.

Top-k takes a few passes of argmax (small k) or a partial selection (``argpartition``),
never a full sort of the output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rnnserve_server.errors import FailedPrecondition, out_of_range

MAX_TOP_K = 1000
MAX_TEMPERATURE = 100.0
Vector = np.ndarray[Any, np.dtype[np.floating[Any]]]


def softmax(logits: Vector) -> Vector:
    """Softmax over the last axis (one distribution per row)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def sigmoid(logits: Vector) -> Vector:
    return 1.0 / (1.0 + np.exp(-logits))


# Above this many outputs a row is selected on its own: a vectorized argpartition of
# [64, 1M] would allocate a 512 MB index array.
ROW_BY_ROW_WIDTH = 65_536


def top_k_rows(values: Vector, k: int) -> tuple[np.ndarray[Any, Any], Vector]:
    """Per row of [B, K], the ids of the k largest values and those values, largest first
    (ties: lower id first, also among values tied with the k-th largest): [B, k] and
    [B, k]. A few passes of argmax for small k, else a partial selection."""
    rows, width = values.shape
    k = max(0, min(k, width))
    if k == 0:
        return np.zeros((rows, 0), dtype=np.int64), values[:, :0]
    if rows == 1 and width <= SORT_WIDTH and np.isfinite(values).all():
        # One row (a lone session's step): a stable sort is the definition itself, and
        # a quarter of the argmax passes' cost.
        ids = np.argsort(-values[0], kind="stable")[None, :k]
        return ids, values[0, ids]
    if k <= ARGMAX_PASSES and k < width:
        ids, chosen = _top_by_argmax(values, k)
        # A row whose remaining values were all -inf (or NaN) may have taken an id twice.
        for r in np.flatnonzero(~np.isfinite(chosen[:, 1:]).all(axis=1)).tolist():
            ids[r], chosen[r] = _top_by_selection(values[r : r + 1], k)
        return ids, chosen
    return _top_by_selection(values, k)


# A single finite row up to this wide is sorted whole.
SORT_WIDTH = 4096
# Up to this k, k passes of argmax (each takes the first, so the lowest id, of equal
# values) beat a partial selection: 256 rows of 100 outputs, k=5, 0.19 ms against 0.42.
ARGMAX_PASSES = 8
# The argmax passes work on a copy of this many values at a time.
ARGMAX_CHUNK = 1 << 20


def _top_by_argmax(values: Vector, k: int) -> tuple[np.ndarray[Any, Any], Vector]:
    rows, width = values.shape
    ids = np.empty((rows, k), dtype=np.int64)
    chosen = np.empty((rows, k), dtype=values.dtype)
    step = max(1, ARGMAX_CHUNK // width)
    for start in range(0, rows, step):
        work = values[start : start + step].copy()
        row = np.arange(len(work))
        for j in range(k):
            best = work.argmax(axis=1)
            ids[start : start + step, j] = best
            chosen[start : start + step, j] = work[row, best]
            work[row, best] = -np.inf
    return ids, chosen


def _top_by_selection(values: Vector, k: int) -> tuple[np.ndarray[Any, Any], Vector]:
    """``top_k_rows`` by partial selection (row by row above ROW_BY_ROW_WIDTH)."""
    rows, width = values.shape
    if k == width:
        candidates = np.broadcast_to(np.arange(width), (rows, width))
    elif width <= ROW_BY_ROW_WIDTH:
        candidates = np.argpartition(values, width - k, axis=1)[:, width - k :]
    else:
        candidates = np.stack([np.argpartition(r, width - k)[width - k :] for r in values])
    # Fancy indexing with the row numbers, not take_along_axis: the same elements, without
    # its per-call overhead (this runs for every batch of steps).
    row = np.arange(rows)[:, None]
    chosen = values[row, candidates]
    if k < width:  # values tied with the k-th largest: the lowest ids are the ones taken
        threshold = chosen.min(axis=1, keepdims=True)
        for r in np.flatnonzero((values >= threshold).sum(axis=1) > k).tolist():
            above = np.flatnonzero(values[r] > threshold[r, 0])
            tied = np.flatnonzero(values[r] == threshold[r, 0])[: k - len(above)]
            candidates[r] = np.concatenate((above, tied))
            chosen[r] = values[r, candidates[r]]
    order = np.lexsort((candidates, -chosen), axis=-1)
    return candidates[row, order], chosen[row, order]


class Top(NamedTuple):
    """The most probable outputs of one step, most probable first: ids and probabilities
    as parallel lists (rows of one array's ``tolist``, not one tuple per entry), and the
    model's output names (token texts or labels) to look the ids up in."""

    ids: list[int]
    probabilities: list[float]
    names: Sequence[str]

    def entries(self) -> Iterator[tuple[int, str, float]]:
        """(id, name, probability) per entry."""
        names = self.names
        for i, p in zip(self.ids, self.probabilities, strict=True):
            yield i, names[i], p


class Described(NamedTuple):
    """What one step answers: its top k, its whole distribution if asked for, and its
    real output vector (``values``) if the model has one."""

    top: Top
    distribution: list[float] | None
    values: list[float] | None


def top_outputs(logits: Vector, k: int, *, sigmoid_head: bool) -> tuple[Any, Vector]:
    """Per row of logits [B, K]: the ids of the k most probable outputs and their
    probabilities, [B, k] each, most probable first (ties: lower id first).

    Selects on the logits (their order is the probabilities'), so no [B, K] distribution
    is made: softmax needs only each row's normalizer, summed in float64 over float32
    exponentials; a sigmoid head's probabilities are those of the k logits alone.
    """
    rows, width = logits.shape
    if rows == 1 and k > 0 and 0 < width <= SORT_WIDTH and np.isfinite(logits).all():
        return _top_of_one_row(logits[0], min(k, width), sigmoid_head=sigmoid_head)
    ids, chosen = top_k_rows(logits, k)
    top = chosen.astype(np.float64)
    if not top.shape[1]:
        return ids, top
    if sigmoid_head:
        return ids, sigmoid(top)
    peak = top[:, :1].astype(logits.dtype)  # the largest logit of each row
    total = np.exp(logits - peak).sum(axis=1, dtype=np.float64, keepdims=True)
    return ids, np.exp(top - peak) / total


def _top_of_one_row(row: Vector, k: int, *, sigmoid_head: bool) -> tuple[Any, Vector]:
    """``top_outputs`` of a single finite row (a lone session's step), the same
    arithmetic in a third of the numpy calls: [1, k] each."""
    ids = np.argsort(-row, kind="stable")[:k]
    top = row[ids].astype(np.float64)
    if sigmoid_head:
        return ids[None], sigmoid(top)[None]
    total = np.exp(row - row[ids[0]]).sum(dtype=np.float64)
    return ids[None], (np.exp(top - top[0]) / total)[None]


def top_k(probabilities: Vector, k: int) -> list[tuple[int, float]]:
    """The k most probable entries of one distribution, most probable first."""
    ids, values = top_k_rows(probabilities[None, :], k)
    return list(zip(ids[0].tolist(), values[0].tolist(), strict=True))


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    @classmethod
    def checked(
        cls, *, temperature: float | None, top_k: int, top_p: float | None, vocabulary: int
    ) -> SamplingParams:
        """Validate the caller's values; INVALID_ARGUMENT names field and range."""
        t = 1.0 if temperature is None else temperature
        if not (math.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE):
            raise out_of_range("temperature", temperature, f"0 .. {MAX_TEMPERATURE:g} (0 = greedy)")
        if not 0 <= top_k <= vocabulary:
            raise out_of_range("top_k", top_k, f"0 .. {vocabulary} (0 = no limit)")
        p = 1.0 if top_p is None else top_p
        if not (math.isfinite(p) and 0.0 < p <= 1.0):
            raise out_of_range("top_p", top_p, "(0, 1]")
        return cls(temperature=t, top_k=top_k, top_p=p)

    def sample(self, logits: Vector, rng: np.random.Generator) -> tuple[int, float]:
        """Draw one token id; returns it with its probability under the distribution used."""
        logits = logits.astype(np.float64)
        if self.temperature == 0.0:
            probabilities = softmax(logits)
            token = int(np.argmax(logits))
            return token, float(probabilities[token])
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            probabilities = softmax(logits / self.temperature)
        if not np.isfinite(probabilities).all():  # numpy's choice would raise a ValueError
            raise not_finite()
        candidates = np.arange(probabilities.shape[0])
        if self.top_k:
            candidates = np.array([i for i, _ in top_k(probabilities, self.top_k)])
        if self.top_p < 1.0:
            ranked = candidates[np.argsort(-probabilities[candidates], kind="stable")]
            cumulative = np.cumsum(probabilities[ranked])
            keep = int(np.searchsorted(cumulative, self.top_p * cumulative[-1])) + 1
            candidates = ranked[:keep]
        weights = probabilities[candidates]
        weights = weights / weights.sum()
        choice = int(rng.choice(len(candidates), p=weights))
        return int(candidates[choice]), float(weights[choice])


def not_finite() -> FailedPrecondition:
    """What sampling from an output that is not finite fails with."""
    return FailedPrecondition(
        "the model's output is not finite (NaN or infinite logits, or a temperature too "
        "small for them): there is nothing to sample from"
    )


def sample_rows(
    params: SamplingParams, logits: Vector, rngs: Sequence[np.random.Generator]
) -> list[tuple[int, float]]:
    """``params.sample`` for each row of ``logits`` [B, K] with its own generator, in one
    vectorized pass: the same tokens, probabilities and generator states, bit for bit.

    Temperature 0 and plain temperature sampling are vectorized; top-k or top-p, or a
    row whose weights are not finite (``sample`` raises for it), take ``sample`` row by
    row. Plain sampling is numpy's ``Generator.choice(K, p=weights)`` unrolled: the
    weights' cumulative sum scaled by its last entry, one ``random()`` draw per row, the
    first index whose cumulative weight exceeds it. The arithmetic is ``sample``'s, step
    for step, done in place on one float64 copy.
    """
    rows = logits.astype(np.float64)
    count = len(rows)
    if params.temperature == 0.0:
        tokens = rows.argmax(axis=-1)
        probabilities = softmax(rows)
        chosen = probabilities[np.arange(count), tokens]
        return list(zip(tokens.tolist(), chosen.tolist(), strict=True))
    if params.top_k or params.top_p < 1.0:
        return [params.sample(row, rng) for row, rng in zip(logits, rngs, strict=True)]
    with np.errstate(over="ignore", invalid="ignore"):  # a row not finite: checked below
        if params.temperature != 1.0:  # x / 1.0 == x: skipping it changes nothing
            rows /= params.temperature
        rows -= rows.max(axis=-1, keepdims=True)  # softmax ...
        np.exp(rows, out=rows)
        rows /= rows.sum(axis=-1, keepdims=True)  # ... = the probabilities
        rows /= rows.sum(axis=-1, keepdims=True)  # the weights, renormalised as sample does
    cumulative = rows.cumsum(axis=-1)
    last = cumulative[:, -1:]
    if not all(map(math.isfinite, last[:, 0].tolist())):
        return [params.sample(row, rng) for row, rng in zip(logits, rngs, strict=True)]
    cumulative /= last
    if count == 1:
        token = int(cumulative[0].searchsorted(rngs[0].random(), side="right"))
        return [(token, float(rows[0, token]))]
    draws = np.array([rng.random() for rng in rngs])
    tokens = (cumulative <= draws[:, None]).sum(axis=-1)
    chosen = rows[np.arange(count), tokens]
    return list(zip(tokens.tolist(), chosen.tolist(), strict=True))
