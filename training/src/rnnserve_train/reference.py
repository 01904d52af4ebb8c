"""An independent numpy transcription of docs/MODELS.md, on seed-notation weights only.

This is the referee in export's parity check, so it is written for clarity, not speed:
one example at a time, column vectors, the one-hot input and the concatenation
``[c<t-1>, x<t>]`` spelt out as in the equations. Computation is in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Array = np.ndarray[Any, np.dtype[np.float64]]


def sigmoid(z: Array) -> Array:
    out: Array = np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z) without overflow
    return out


def one_hot(index: int, size: int) -> Array:
    x = np.zeros(size)
    x[index] = 1.0
    return x


def gru(w: Mapping[str, Array], c_prev: Array, x: Array) -> Array:
    """Full GRU: Γ_r gates c<t-1> before the product; Γ_u weights the candidate."""
    gamma_r = sigmoid(w["W_r"] @ np.concatenate([c_prev, x]) + w["b_r"])
    c_tilde = np.tanh(w["W_c"] @ np.concatenate([gamma_r * c_prev, x]) + w["b_c"])
    gamma_u = sigmoid(w["W_u"] @ np.concatenate([c_prev, x]) + w["b_u"])
    c: Array = gamma_u * c_tilde + (1.0 - gamma_u) * c_prev
    return c


REFERENCE_CELLS: dict[str, Callable[[Mapping[str, Array], Array, Array], Array]] = {"gru": gru}


class ReferenceModel:
    """The model of a weights.npz: ``step`` and ``head`` as the step/head graphs."""

    def __init__(self, cell: str, weights: Mapping[str, np.ndarray]) -> None:
        self.cell = REFERENCE_CELLS[cell]
        self.layers: list[dict[str, Array]] = []
        while any(k.startswith(f"layer{len(self.layers) + 1}.") for k in weights):
            prefix = f"layer{len(self.layers) + 1}."
            self.layers.append(
                {
                    k[len(prefix) :]: v.astype(np.float64)
                    for k, v in weights.items()
                    if k.startswith(prefix)
                }
            )
        self.W_ya = weights["W_ya"].astype(np.float64)
        self.b_y = weights["b_y"].astype(np.float64)
        self.n_y, self.n_a = self.W_ya.shape
        first = next(iter(self.layers[0].values()))
        self.n_x = first.shape[1] - self.n_a

    def zero_state(self, batch: int) -> Array:
        return np.zeros((len(self.layers), batch, self.n_a))

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[Array, Array]:
        """tokens [B] int, state [L, B, n_a] -> (logits [B, n_y], state [L, B, n_a])."""
        new_state = np.zeros((len(self.layers), len(tokens), self.n_a))
        for b, token in enumerate(tokens):
            x = one_hot(int(token), self.n_x)
            for layer, w in enumerate(self.layers):
                x = self.cell(w, state[layer, b].astype(np.float64), x)
                new_state[layer, b] = x
        return self.head(new_state), new_state

    def head(self, state: np.ndarray) -> Array:
        """ŷ = W_ya a<t> + b_y on the last layer: [L, B, n_a] -> [B, n_y]."""
        return np.stack([self.W_ya @ a + self.b_y for a in state[-1].astype(np.float64)])
