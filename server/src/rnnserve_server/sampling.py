"""Turning logits into what callers asked for: probabilities, top-k, sampled tokens.

Top-k uses a partial selection (``argpartition``), never a full sort of the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server.errors import out_of_range

MAX_TOP_K = 1000
MAX_TEMPERATURE = 100.0
Vector = np.ndarray[Any, np.dtype[np.floating[Any]]]


def softmax(logits: Vector) -> Vector:
    shifted = np.exp(logits - np.max(logits))
    return shifted / shifted.sum()  # type: ignore[no-any-return]


def sigmoid(logits: Vector) -> Vector:
    return 1.0 / (1.0 + np.exp(-logits))


def top_k(probabilities: Vector, k: int) -> list[tuple[int, float]]:
    """The k most probable entries, most probable first (ties: lower id first)."""
    k = min(k, probabilities.shape[0])
    if k <= 0:
        return []
    if k < probabilities.shape[0]:
        candidates = np.argpartition(-probabilities, k - 1)[:k]
    else:
        candidates = np.arange(probabilities.shape[0])
    order = sorted(candidates.tolist(), key=lambda i: (-probabilities[i], i))
    return [(int(i), float(probabilities[i])) for i in order]


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
        probabilities = softmax(logits / self.temperature)
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
