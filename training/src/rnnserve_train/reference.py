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


def lstm(w: Weights, a_prev: Array, c_prev: Array, x: Array) -> tuple[Array, Array]:
    """PyTorch's nn.LSTM (docs/MODELS.md): input, forget and output gates, candidate g."""
    i = sigmoid(w["W_i"] @ np.concatenate([a_prev, x]) + w["b_i"])
    f = sigmoid(w["W_f"] @ np.concatenate([a_prev, x]) + w["b_f"])
    g = np.tanh(w["W_g"] @ np.concatenate([a_prev, x]) + w["b_g"])
    o = sigmoid(w["W_o"] @ np.concatenate([a_prev, x]) + w["b_o"])
    c: Array = f * c_prev + i * g
    a: Array = o * np.tanh(c)
    return a, c


# A cell of the reference: (weights, the layer's state [parts, n_a], input) -> new state.
ReferenceCell = Callable[[Weights, Array, Array], Array]


def _one_part(cell: Callable[[Weights, Array, Array], Array]) -> ReferenceCell:
    return lambda w, state, x: cell(w, state[0], x)[None]


def _lstm_cell(w: Weights, state: Array, x: Array) -> Array:
    return np.stack(lstm(w, state[0], state[1], x))


REFERENCE_CELLS: dict[str, ReferenceCell] = {
    "rnn-tanh": _one_part(rnn_tanh),
    "rnn-relu": _one_part(rnn_relu),
    "gru-simple": _one_part(gru_simple),
    "gru": _one_part(gru),
    "gru-torch": _one_part(gru_torch),
    "lstm": _lstm_cell,
}
# The state of a layer: a<t> alone, or for the LSTM (a<t>, c<t>).
STATE_PARTS = {name: 2 if name == "lstm" else 1 for name in REFERENCE_CELLS}


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
    ``condition`` as the graphs of the same names. The state is [S, B, n_a]: a<t> of
    every layer, then (LSTM) c<t> of every layer. Inputs are token ids (one-hot, or
    embedded by ``W_ex``), or float vectors with ``vectors``."""

    def __init__(
        self, cell: str, weights: Mapping[str, np.ndarray], *, vectors: bool = False
    ) -> None:
        self.cell = REFERENCE_CELLS[cell]
        self.parts = STATE_PARTS[cell]
        self.vectors = vectors
        self.W_ex = weights["W_ex"].astype(np.float64) if "W_ex" in weights else None
        self.layers = _layers(weights, "")
        self.encoder_layers = _layers(weights, "encoder.")
        self.A0 = weights["condition.A0"].astype(np.float64) if "condition.A0" in weights else None
        self.W_ya = weights["W_ya"].astype(np.float64)
        self.b_y = weights["b_y"].astype(np.float64)
        self.n_y, self.n_a = self.W_ya.shape
        first = next(v for k, v in self.layers[0].items() if k.startswith("W_"))
        self.n_x = first.shape[1] - self.n_a

    def zero_state(self, batch: int) -> Array:
        return np.zeros((self.parts * len(self.layers), batch, self.n_a))

    def _input(self, value: Any, *, encoder: bool = False) -> Array:
        """x<t> as the first layer reads it: the vector, the embedded token ``W_ex x<t>``
        or the one-hot token."""
        if self.vectors:
            return np.asarray(value, dtype=np.float64)
        if self.W_ex is not None and not encoder:
            return self.W_ex @ one_hot(int(value), self.W_ex.shape[1])
        return one_hot(int(value), self.n_x)

    def _advance(
        self, layers: list[dict[str, Array]], value: Any, state: Array, *, encoder: bool = False
    ) -> Array:
        """One input through a stack: state [S, n_a] -> [S, n_a]."""
        x = self._input(value, encoder=encoder)
        L = len(layers)
        new = np.zeros_like(state)
        for layer, w in enumerate(layers):
            rows = [p * L + layer for p in range(self.parts)]
            new[rows] = self.cell(w, state[rows], x)
            x = new[layer]
        return new

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[Array, Array]:
        """inputs [B] (or [B, n_x]), state [S, B, n_a] -> (logits [B, n_y], state)."""
        new_state = np.zeros((state.shape[0], len(tokens), self.n_a))
        for b, token in enumerate(tokens):
            new_state[:, b] = self._advance(self.layers, token, state[:, b].astype(np.float64))
        return self.head(new_state), new_state

    def head(self, state: np.ndarray) -> Array:
        """ŷ = W_ya a<t> + b_y on the last layer: [S, B, n_a] -> [B, n_y]."""
        top = state[len(self.layers) - 1].astype(np.float64)
        return np.stack([self.W_ya @ a + self.b_y for a in top])

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
        """The encoder's state after each row's source: [S, B, n_a] from zeros."""
        state = np.zeros((self.parts * len(self.encoder_layers), tokens.shape[0], self.n_a))
        for b in range(tokens.shape[0]):
            for token in tokens[b, : lengths[b]]:
                state[:, b] = self._advance(self.encoder_layers, token, state[:, b], encoder=True)
        return state

    def condition(self, indices: np.ndarray) -> Array:
        """a<0> = tanh(A0[c]) for each condition index: [S, B, n_a]."""
        assert self.A0 is not None, "the weights hold no condition.A0"
        state: Array = np.tanh(self.A0[indices]).transpose(1, 0, 2)
        return state
