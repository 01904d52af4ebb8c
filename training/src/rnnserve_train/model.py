"""The recurrent language model of docs/MODELS.md, written from primitives.

A model is a stack of cells and an output layer ``ŷ<t> = W_ya a<t> + b_y`` (logits; the
softmax lives in the loss and in the server). The first layer's input is a token, whose
one-hot product ``W_ax x<t>`` is a gather of rows of ``input_weight``; deeper layers read
the activation of the layer below.

Each cell splits its work in two: ``project`` computes the input half of every gate for a
whole chunk in one product (no recurrence there), and ``step`` does the recurrent half of
one time step. Cells are registered in ``CELLS`` by their manifest name.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional


class Cell(nn.Module):
    """One recurrent layer. Subclasses name their gates and implement ``step``.

    ``input_weight`` holds, for every gate g, the input block of ``W_g`` transposed:
    row i is ``W_gx[:, i]`` for every gate side by side, so a token's projection is
    one row lookup and a dense input's is one matrix product.
    """

    gates: ClassVar[tuple[str, ...]]

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.embed = input_size, hidden_size, embed
        width = len(self.gates) * hidden_size
        self.input_weight = nn.Parameter(torch.empty(input_size, width))
        self.bias = nn.Parameter(torch.empty(width))

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def project(self, inputs: Tensor) -> Tensor:
        """Input half of every gate, bias included: [..., gates * hidden]."""
        if self.embed:
            return functional.embedding(inputs, self.input_weight) + self.bias
        return inputs @ self.input_weight + self.bias

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        """One time step: ``projected`` [B, gates*H], ``state`` [B, H] -> new state."""
        raise NotImplementedError

    def scan(self, projected: Tensor, state: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        """Every step of a chunk: [B, T, gates*H] -> (activations [B, T, H], last state).

        ``keep`` [B, T] zeroes the state before the steps where it is 0 (document starts).
        """
        # unbind, not projected[:, t]: indexing's backward would build a full-size
        # gradient per step.
        keeps = keep.unsqueeze(-1).unbind(1) if keep is not None else None
        outputs = []
        for t, projected_t in enumerate(projected.unbind(1)):
            if keeps is not None:
                state = state * keeps[t]
            state = self.step(projected_t, state)
            outputs.append(state)
        return torch.stack(outputs, dim=1), state

    # ------------------------------------------------------------------ seed notation

    def recurrent_blocks(self) -> dict[str, Tensor]:
        """``W_ga`` (hidden, hidden) for every gate g: the recurrent block of ``W_g``."""
        raise NotImplementedError

    def load_recurrent_blocks(self, blocks: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def seed_weights(self) -> dict[str, np.ndarray]:
        """``W_g = [W_ga | W_gx]`` of shape (n_a, n_a + n_x) and ``b_g``, per gate."""
        H = self.hidden_size
        recurrent = self.recurrent_blocks()
        out: dict[str, np.ndarray] = {}
        for i, gate in enumerate(self.gates):
            input_block = self.input_weight[:, i * H : (i + 1) * H].T
            matrix = torch.cat([recurrent[gate], input_block], dim=1)
            out[f"W_{gate}"] = matrix.detach().cpu().numpy().astype(np.float32)
            out[f"b_{gate}"] = self.bias[i * H : (i + 1) * H].detach().cpu().numpy()
        return out

    @torch.no_grad()
    def load_seed_weights(self, weights: dict[str, np.ndarray]) -> None:
        H = self.hidden_size
        recurrent: dict[str, Tensor] = {}
        for i, gate in enumerate(self.gates):
            matrix = torch.as_tensor(weights[f"W_{gate}"], dtype=torch.float32)
            expected = (H, H + self.input_size)
            if tuple(matrix.shape) != expected:
                raise ValueError(f"W_{gate}: shape {tuple(matrix.shape)}, expected {expected}")
            recurrent[gate] = matrix[:, :H]
            self.input_weight[:, i * H : (i + 1) * H] = matrix[:, H:].T
            self.bias[i * H : (i + 1) * H] = torch.as_tensor(weights[f"b_{gate}"])
        self.load_recurrent_blocks(recurrent)


class GRUCell(Cell):
    """The full GRU (``gru``) of docs/MODELS.md: the relevance gate acts *before* the
    recurrent product, and ``Γ_u`` weights the candidate.

        Γ_r   = σ(W_r [c<t-1>, x<t>] + b_r)
        c̃<t> = tanh(W_c [Γ_r * c<t-1>, x<t>] + b_c)
        Γ_u   = σ(W_u [c<t-1>, x<t>] + b_u)
        c<t>  = Γ_u * c̃<t> + (1 - Γ_u) * c<t-1>
    """

    gates = ("r", "u", "c")

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__(input_size, hidden_size, embed=embed)
        # Recurrent blocks, transposed for `state @ weight`: [W_ra | W_ua]^T and W_ca^T.
        self.recurrent_ru = nn.Parameter(torch.empty(hidden_size, 2 * hidden_size))
        self.recurrent_c = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.reset_parameters()

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        H = self.hidden_size
        gates_ru = torch.sigmoid(torch.addmm(projected[:, : 2 * H], state, self.recurrent_ru))
        relevance, update = gates_ru[:, :H], gates_ru[:, H:]
        candidate = torch.tanh(
            torch.addmm(projected[:, 2 * H :], relevance * state, self.recurrent_c)
        )
        return torch.lerp(state, candidate, update)  # Γ_u * c̃ + (1 - Γ_u) * c<t-1>

    def recurrent_blocks(self) -> dict[str, Tensor]:
        H = self.hidden_size
        return {
            "r": self.recurrent_ru[:, :H].T,
            "u": self.recurrent_ru[:, H:].T,
            "c": self.recurrent_c.T,
        }

    def load_recurrent_blocks(self, blocks: dict[str, Tensor]) -> None:
        self.recurrent_ru.copy_(torch.cat([blocks["r"].T, blocks["u"].T], dim=1))
        self.recurrent_c.copy_(blocks["c"].T)


# Manifest cell name -> implementation. rnn-tanh, rnn-relu, gru-simple and gru-torch
# join here as siblings of GRUCell.
CELLS: dict[str, type[Cell]] = {"gru": GRUCell}


class RNNLanguageModel(nn.Module):
    """Stacked cells over a vocabulary; the state is [layers, batch, hidden]."""

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; known: {sorted(CELLS)}")
        self.cell_name, self.vocab_size = cell, vocab_size
        self.hidden_size, self.layers = hidden_size, layers
        self.cells = nn.ModuleList(
            CELLS[cell](vocab_size if i == 0 else hidden_size, hidden_size, embed=i == 0)
            for i in range(layers)
        )
        self.output = nn.Linear(hidden_size, vocab_size)  # W_ya, b_y

    @property
    def stack(self) -> list[Cell]:
        """The cells, first layer first."""
        return cast("list[Cell]", list(self.cells))

    def zero_state(self, batch: int) -> Tensor:
        parameter = self.output.weight
        return parameter.new_zeros(self.layers, batch, self.hidden_size)

    def initial_state(self, token: int, batch: int = 1) -> Tensor:
        """The state after feeding ``token`` (e.g. bos) to a zero state: [L, batch, H]."""
        tokens = torch.full((batch,), token, dtype=torch.int64, device=self.output.weight.device)
        return self.step(tokens, self.zero_state(batch))[1]

    def forward(
        self, tokens: Tensor, state: Tensor, keep: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """tokens [B, T], state [L, B, H] -> (logits [B, T, K], state [L, B, H])."""
        inputs: Tensor = tokens
        states = []
        for layer, cell in enumerate(self.stack):
            inputs, last = cell.scan(cell.project(inputs), state[layer], keep)
            states.append(last)
        logits: Tensor = self.output(inputs)
        return logits, torch.stack(states)

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B], state [L, B, H] -> (logits [B, K], state [L, B, H])."""
        inputs: Tensor = tokens
        states = []
        for layer, cell in enumerate(self.stack):
            inputs = cell.step(cell.project(inputs), state[layer])
            states.append(inputs)
        logits: Tensor = self.output(inputs)
        return logits, torch.stack(states)

    def head(self, state: Tensor) -> Tensor:
        """The output for the current state, [L, B, H] -> logits [B, K]."""
        logits: Tensor = self.output(state[-1])
        return logits

    # ------------------------------------------------------------------ seed notation

    def to_seed_weights(self) -> dict[str, np.ndarray]:
        """Weights in the notation of docs/MODELS.md: ``layer1.W_r`` ... ``W_ya``, ``b_y``."""
        weights: dict[str, np.ndarray] = {}
        for i, cell in enumerate(self.stack, start=1):
            for key, value in cell.seed_weights().items():
                weights[f"layer{i}.{key}"] = value
        weights["W_ya"] = self.output.weight.detach().cpu().numpy().copy()
        weights["b_y"] = self.output.bias.detach().cpu().numpy().copy()
        return weights

    @torch.no_grad()
    def load_seed_weights(self, weights: dict[str, np.ndarray]) -> None:
        for i, cell in enumerate(self.stack, start=1):
            prefix = f"layer{i}."
            cell.load_seed_weights(
                {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            )
        self.output.weight.copy_(torch.as_tensor(weights["W_ya"]))
        self.output.bias.copy_(torch.as_tensor(weights["b_y"]))

    @classmethod
    def from_seed_weights(cls, cell: str, weights: dict[str, np.ndarray]) -> RNNLanguageModel:
        """Rebuild a model from seed-notation weights alone (shapes give the sizes)."""
        layers = len({k.split(".")[0] for k in weights if k.startswith("layer")})
        vocab_size, hidden_size = weights["W_ya"].shape
        model = cls(cell, vocab_size, hidden_size, layers)
        model.load_seed_weights(weights)
        return model
