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
Weights = Mapping[str, Array]


def sigmoid(z: Array) -> Array:
    out: Array = np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z) without overflow
    return out


def one_hot(index: int, size: int) -> Array:
    x = np.zeros(size)
    x[index] = 1.0
    return x


def rnn_tanh(w: Weights, a_prev: Array, x: Array) -> Array:
    """a<t> = tanh(W_a [a<t-1>, x<t>] + b_a)."""
    a: Array = np.tanh(w["W_a"] @ np.concatenate([a_prev, x]) + w["b_a"])
    return a


def rnn_relu(w: Weights, a_prev: Array, x: Array) -> Array:
    """a<t> = ReLU(W_a [a<t-1>, x<t>] + b_a)."""
    a: Array = np.maximum(0.0, w["W_a"] @ np.concatenate([a_prev, x]) + w["b_a"])
    return a


def gru_simple(w: Weights, c_prev: Array, x: Array) -> Array:
    """GRU with the update gate only; the memory cell is the activation."""
    c_tilde = np.tanh(w["W_c"] @ np.concatenate([c_prev, x]) + w["b_c"])
    gamma_u = sigmoid(w["W_u"] @ np.concatenate([c_prev, x]) + w["b_u"])
    c: Array = gamma_u * c_tilde + (1.0 - gamma_u) * c_prev
    return c


def gru(w: Weights, c_prev: Array, x: Array) -> Array:
    """Full GRU: Γ_r gates c<t-1> before the product; Γ_u weights the candidate."""
    gamma_r = sigmoid(w["W_r"] @ np.concatenate([c_prev, x]) + w["b_r"])
    c_tilde = np.tanh(w["W_c"] @ np.concatenate([gamma_r * c_prev, x]) + w["b_c"])
    gamma_u = sigmoid(w["W_u"] @ np.concatenate([c_prev, x]) + w["b_u"])
    c: Array = gamma_u * c_tilde + (1.0 - gamma_u) * c_prev
    return c


def gru_torch(w: Weights, h_prev: Array, x: Array) -> Array:
    """PyTorch's nn.GRU, from its documentation: the reset gate multiplies after the
    recurrent product, and z weights the *old* state. ``W_n = [W_hn | W_in]``."""
    n_a = len(h_prev)
    r = sigmoid(w["W_r"] @ np.concatenate([h_prev, x]) + w["b_r"])
    z = sigmoid(w["W_z"] @ np.concatenate([h_prev, x]) + w["b_z"])
    W_hn, W_in = w["W_n"][:, :n_a], w["W_n"][:, n_a:]
    n = np.tanh(W_in @ x + w["b_n"] + r * (W_hn @ h_prev + w["b_hn"]))
    h: Array = (1.0 - z) * n + z * h_prev
    return h


REFERENCE_CELLS: dict[str, Callable[[Weights, Array, Array], Array]] = {
    "rnn-tanh": rnn_tanh,
    "rnn-relu": rnn_relu,
    "gru-simple": gru_simple,
    "gru": gru,
    "gru-torch": gru_torch,
}


def _layers(weights: Mapping[str, np.ndarray], prefix: str) -> list[dict[str, Array]]:
    layers: list[dict[str, Array]] = []
    while any(k.startswith(f"{prefix}layer{len(layers) + 1}.") for k in weights):
        start = f"{prefix}layer{len(layers) + 1}."
        layers.append(
            {
                k[len(start) :]: v.astype(np.float64)
                for k, v in weights.items()
                if k.startswith(start)
            }
        )
    return layers


class ReferenceModel:
    """The model of a weights.npz: ``step``, ``head``, ``sequence``, ``encode`` and
    ``condition`` as the graphs of the same names."""

    def __init__(self, cell: str, weights: Mapping[str, np.ndarray]) -> None:
        self.cell = REFERENCE_CELLS[cell]
        self.layers = _layers(weights, "")
        self.encoder_layers = _layers(weights, "encoder.")
        self.A0 = weights["condition.A0"].astype(np.float64) if "condition.A0" in weights else None
        self.W_ya = weights["W_ya"].astype(np.float64)
        self.b_y = weights["b_y"].astype(np.float64)
        self.n_y, self.n_a = self.W_ya.shape
        first = next(v for k, v in self.layers[0].items() if k.startswith("W_"))
        self.n_x = first.shape[1] - self.n_a

    def zero_state(self, batch: int) -> Array:
        return np.zeros((len(self.layers), batch, self.n_a))

    def _advance(self, layers: list[dict[str, Array]], token: int, state: Array) -> Array:
        """One token through a stack: state [L, n_a] -> [L, n_a]."""
        x = one_hot(int(token), self.n_x)
        new = np.zeros_like(state)
        for layer, w in enumerate(layers):
            x = self.cell(w, state[layer], x)
            new[layer] = x
        return new

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[Array, Array]:
        """tokens [B] int, state [L, B, n_a] -> (logits [B, n_y], state [L, B, n_a])."""
        new_state = np.zeros((len(self.layers), len(tokens), self.n_a))
        for b, token in enumerate(tokens):
            new_state[:, b] = self._advance(self.layers, token, state[:, b].astype(np.float64))
        return self.head(new_state), new_state

    def head(self, state: np.ndarray) -> Array:
        """ŷ = W_ya a<t> + b_y on the last layer: [L, B, n_a] -> [B, n_y]."""
        return np.stack([self.W_ya @ a + self.b_y for a in state[-1].astype(np.float64)])

    def sequence(
        self, tokens: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[Array, Array]:
        """Each row's first ``lengths[b]`` tokens, one at a time: (logits [B, n_y] after
        the last, state [L, B, n_a] after it)."""
        new_state = state.astype(np.float64).copy()
        for b in range(tokens.shape[0]):
            for token in tokens[b, : lengths[b]]:
                new_state[:, b] = self._advance(self.layers, token, new_state[:, b])
        return self.head(new_state), new_state

    def encode(self, tokens: np.ndarray, lengths: np.ndarray) -> Array:
        """The encoder's state after each row's source: [L, B, n_a] from zeros."""
        state = np.zeros((len(self.encoder_layers), tokens.shape[0], self.n_a))
        for b in range(tokens.shape[0]):
            for token in tokens[b, : lengths[b]]:
                state[:, b] = self._advance(self.encoder_layers, token, state[:, b])
        return state

    def condition(self, indices: np.ndarray) -> Array:
        """a<0> = tanh(A0[c]) for each condition index: [L, B, n_a]."""
        assert self.A0 is not None, "the weights hold no condition.A0"
        state: Array = np.tanh(self.A0[indices]).transpose(1, 0, 2)
        return state
