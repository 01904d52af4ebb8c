"""The recurrent models of docs/MODELS.md, written from primitives.

A model is a stack of cells and an output layer ``ŷ<t> = W_ya a<t> + b_y`` (logits; the
softmax or sigmoid lives in the loss and in the server). The first layer's input is a
token, whose one-hot product ``W_ax x<t>`` is a gather of rows of ``input_weight`` (or,
with an embedding ``W_ex``, the product with the embedded token ``W_ex x<t>``), or a
float vector (``input_size``); deeper layers read the activation of the layer below.

The state is one tensor ``[S, B, H]``: ``h`` of every layer, first layer first, and for
the LSTM then ``c`` of every layer (``S = parts * layers``), as the package stores it.
Inside the stack a layer's state is ``[B, parts * H]`` (``h`` then ``c``).

Each cell splits its work in two: ``project`` computes the input half of every gate for a
whole chunk in one product (no recurrence there), and ``step`` does the recurrent half of
one time step. Cells are registered in ``CELLS`` by their manifest name.

One model class serves every shape of docs/MODELS.md: the output layer has ``output_size``
units (the vocabulary, or the labels of a classifier); an optional encoder stack (same
cell, layers and width) turns a source into the decoder's initial state (seq2seq); an
optional condition table gives a one-to-many generator its initial state
``a<0> = tanh(A0[c])`` for condition ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

# A token's input is one-hot, so each gate's pre-activation gets exactly one entry of W_gx
# (fan-in 1), not a sum over H inputs: 1/√H would make every gate start near 0.5 and every
# state change tiny, and the model would spend its first hundreds of steps growing them.
# Measured on the word LM (KJV, 10k words, GRU 128, 300 steps): test perplexity 350 with
# ±1/√H, 101 with ±4, 108 with ±8.
EMBED_INIT = 4.0


def blend(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``weight * end + (1 - weight) * start``, as ``start + weight * (end - start)``.

    Not ``torch.lerp``: its exported graph takes eight operations over the state, one of
    them a ``Where`` on ``weight < 0.5`` (lerp's two formulas), and onnxruntime's
    ``Where`` branches per element: on the benchmark model at batch 256 with varied
    tokens it cost 1.0 of 3.1 ms per step. This is three (Sub, Mul, Add), in training
    and in every exported graph alike; the two differ by rounding only.
    """
    return start + weight * (end - start)


def _numpy(tensor: Tensor) -> np.ndarray:
    """A copy of ``tensor``'s values, detached from the parameter it reads."""
    return tensor.detach().cpu().numpy().copy()


class Cell(nn.Module):
    """One recurrent layer. Subclasses name their gates and implement ``step``.

    ``input_weight`` holds, for every gate g, the input block of ``W_g`` transposed:
    row i is ``W_gx[:, i]`` for every gate side by side, so a token's projection is
    one row lookup and a dense input's is one matrix product. ``recurrent`` holds the
    recurrent blocks ``W_ga`` of the gates that read ``a<t-1>`` directly, transposed, side
    by side, so their recurrent half is one product per step.
    """

    gates: ClassVar[tuple[str, ...]]
    # The state tensors of one layer: ``h`` (the activation), and for the LSTM ``c``.
    state_parts: ClassVar[tuple[str, ...]] = ("h",)
    # The gates whose recurrent block is in ``recurrent`` (in order); the rest (the GRU's
    # candidate, which reads Γ_r * c<t-1>) have their own parameter.
    recurrent_gates: ClassVar[tuple[str, ...]]
    # The bound of a first layer's token rows (None: 1/√H like the other parameters).
    embed_init: ClassVar[float | None] = EMBED_INIT

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.embed = input_size, hidden_size, embed
        width = len(self.gates) * hidden_size
        self.input_weight = nn.Parameter(torch.empty(input_size, width))
        self.bias = nn.Parameter(torch.empty(width))
        self.recurrent = nn.Parameter(
            torch.empty(hidden_size, len(self.recurrent_gates) * hidden_size)
        )

    def reset_parameters(self) -> None:
        """U(-1/√H, 1/√H) for every parameter (as nn.RNN/nn.GRU), except a first layer's
        token rows: U(-embed_init, embed_init) (EMBED_INIT, see there)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)
        if self.embed and self.embed_init is not None:
            nn.init.uniform_(self.input_weight, -self.embed_init, self.embed_init)

    def project(self, inputs: Tensor) -> Tensor:
        """Input half of every gate, bias included: [..., gates * hidden]."""
        if self.embed:
            return functional.embedding(inputs, self.input_weight) + self.bias
        return inputs @ self.input_weight + self.bias

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        """One time step: ``projected`` [B, gates*H], ``state`` [B, parts*H] -> new state."""
        raise NotImplementedError

    def output(self, state: Tensor) -> Tensor:
        """The activation ``a<t>`` (what the next layer and the head read) of a layer's
        state [..., parts*H]: its ``h``."""
        return state if len(self.state_parts) == 1 else state[..., : self.hidden_size]

    def scan(
        self,
        projected: Tensor,
        state: Tensor,
        keep: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Every step of a chunk: [B, T, gates*H] -> (states [B, T, parts*H], last state).

        ``keep`` [B, T] (float) zeroes the state before the steps where it is 0 (document
        starts in a packed stream). ``valid`` [B, T] (bool) marks real tokens: at a padded
        step the state is carried unchanged, so the last state of a row is its state after
        its last real token, exactly as if the row had been run alone.
        """
        # unbind, not projected[:, t]: indexing's backward would build a full-size
        # gradient per step.
        keeps = keep.unsqueeze(-1).unbind(1) if keep is not None else None
        valids = valid.unsqueeze(-1).unbind(1) if valid is not None else None
        outputs = []
        for t, projected_t in enumerate(projected.unbind(1)):
            if keeps is not None:
                state = state * keeps[t]
            new = self.step(projected_t, state)
            state = new if valids is None else torch.where(valids[t], new, state)
            outputs.append(state)
        return torch.stack(outputs, dim=1), state

    # ------------------------------------------------------------------ seed notation

    def recurrent_blocks(self) -> dict[str, Tensor]:
        """``W_ga`` (hidden, hidden) for every gate g: the recurrent block of ``W_g``."""
        H = self.hidden_size
        return {
            gate: self.recurrent[:, i * H : (i + 1) * H].T
            for i, gate in enumerate(self.recurrent_gates)
        }

    def load_recurrent_blocks(self, blocks: dict[str, Tensor]) -> None:
        self.recurrent.copy_(torch.cat([blocks[g].T for g in self.recurrent_gates], dim=1))

    def extra_seed_weights(self) -> dict[str, np.ndarray]:
        """Parameters outside ``W_g``/``b_g`` (none, except in gru-torch)."""
        return {}

    def load_extra_seed_weights(self, weights: dict[str, np.ndarray]) -> None:
        """The inverse of ``extra_seed_weights``."""

    def seed_weights(self) -> dict[str, np.ndarray]:
        """``W_g = [W_ga | W_gx]`` of shape (n_a, n_a + n_x) and ``b_g``, per gate."""
        H = self.hidden_size
        recurrent = self.recurrent_blocks()
        out: dict[str, np.ndarray] = {}
        for i, gate in enumerate(self.gates):
            input_block = self.input_weight[:, i * H : (i + 1) * H].T
            matrix = torch.cat([recurrent[gate], input_block], dim=1)
            out[f"W_{gate}"] = matrix.detach().cpu().numpy().astype(np.float32)
            out[f"b_{gate}"] = _numpy(self.bias[i * H : (i + 1) * H])
        out.update(self.extra_seed_weights())
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
        self.load_extra_seed_weights(weights)


class RNNTanhCell(Cell):
    """The vanilla RNN (``rnn-tanh``): ``a<t> = tanh(W_a [a<t-1>, x<t>] + b_a)``."""

    gates = ("a",)
    recurrent_gates = ("a",)

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__(input_size, hidden_size, embed=embed)
        self.reset_parameters()

    @staticmethod
    def activation(z: Tensor) -> Tensor:
        return torch.tanh(z)

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        return self.activation(torch.addmm(projected, state, self.recurrent))


class RNNReluCell(RNNTanhCell):
    """The vanilla RNN with ReLU (``rnn-relu``): ``a<t> = max(0, W_a [a<t-1>, x<t>] + b_a)``."""

    # ReLU does not saturate, so large token rows only make large activations: the
    # one-step model's test perplexity was 104 with ±1/√H and 123 with ±4.
    embed_init = None

    @staticmethod
    def activation(z: Tensor) -> Tensor:
        return torch.relu(z)


class SimpleGRUCell(Cell):
    """The GRU with the update gate only (``gru-simple``), ``c<t> = a<t>``:

    c̃<t> = tanh(W_c [c<t-1>, x<t>] + b_c)
        Γ_u   = σ(W_u [c<t-1>, x<t>] + b_u)
        c<t>  = Γ_u * c̃<t> + (1 - Γ_u) * c<t-1>
    """

    gates = ("u", "c")
    recurrent_gates = ("u", "c")

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__(input_size, hidden_size, embed=embed)
        self.reset_parameters()

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        H = self.hidden_size
        both = torch.addmm(projected, state, self.recurrent)
        update, candidate = torch.sigmoid(both[:, :H]), torch.tanh(both[:, H:])
        return blend(state, candidate, update)  # Γ_u * c̃ + (1 - Γ_u) * c<t-1>


class GRUCell(Cell):
    """The full GRU (``gru``) of docs/MODELS.md: the relevance gate acts *before* the
    recurrent product, and ``Γ_u`` weights the candidate.

        Γ_r   = σ(W_r [c<t-1>, x<t>] + b_r)
        c̃<t> = tanh(W_c [Γ_r * c<t-1>, x<t>] + b_c)
        Γ_u   = σ(W_u [c<t-1>, x<t>] + b_u)
        c<t>  = Γ_u * c̃<t> + (1 - Γ_u) * c<t-1>
    """

    gates = ("r", "u", "c")
    recurrent_gates = ("r", "u")

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__(input_size, hidden_size, embed=embed)
        # W_ca^T: the candidate's recurrent block reads Γ_r * c<t-1>, so it has its own.
        self.recurrent_c = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.reset_parameters()

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        H = self.hidden_size
        gates_ru = torch.sigmoid(torch.addmm(projected[:, : 2 * H], state, self.recurrent))
        relevance, update = gates_ru[:, :H], gates_ru[:, H:]
        candidate = torch.tanh(
            torch.addmm(projected[:, 2 * H :], relevance * state, self.recurrent_c)
        )
        return blend(state, candidate, update)  # Γ_u * c̃ + (1 - Γ_u) * c<t-1>

    @property
    def recurrent_ru(self) -> Tensor:
        """[W_ra | W_ua]^T (the name earlier versions used)."""
        return self.recurrent

    def recurrent_blocks(self) -> dict[str, Tensor]:
        return {**super().recurrent_blocks(), "c": self.recurrent_c.T}

    def load_recurrent_blocks(self, blocks: dict[str, Tensor]) -> None:
        super().load_recurrent_blocks(blocks)
        self.recurrent_c.copy_(blocks["c"].T)


class TorchGRUCell(Cell):
    """PyTorch's GRU variant (``gru-torch``, what ``nn.GRU`` computes; *not* the course
    GRU): the reset gate multiplies *after* the recurrent product, and ``z`` weights the
    old state.

        r  = σ(W_r [h, x] + b_r)                 (b_r = b_ir + b_hr)
        z  = σ(W_z [h, x] + b_z)                 (b_z = b_iz + b_hz)
        n  = tanh(W_in x + b_n + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    The seed weights name the blocks as the course does (``W_n = [W_hn | W_in]``) and add
    ``b_hn``, the one bias that cannot be folded. On CUDA, a chunk without resets or
    padding runs PyTorch's fused GRU kernel (cuDNN); ``step`` is the same function
    written out, and the CPU path.
    """

    gates = ("r", "z", "n")
    recurrent_gates = ("r", "z", "n")

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__(input_size, hidden_size, embed=embed)
        self.recurrent_bias_n = nn.Parameter(torch.empty(hidden_size))  # b_hn
        self.reset_parameters()

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        H = self.hidden_size
        recurrent = state @ self.recurrent
        gates_rz = torch.sigmoid(projected[:, : 2 * H] + recurrent[:, : 2 * H])
        reset, update = gates_rz[:, :H], gates_rz[:, H:]
        candidate = torch.tanh(
            projected[:, 2 * H :] + reset * (recurrent[:, 2 * H :] + self.recurrent_bias_n)
        )
        return blend(candidate, state, update)  # (1 - z) * n + z * h

    def scan(
        self,
        projected: Tensor,
        state: Tensor,
        keep: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if keep is None and valid is None and projected.device.type == "cuda":
            return self.fused_scan(projected, state)
        # On the CPU the step loop is faster: 1.6x (H=128) to 2x (H=256) the fused
        # kernel, which must multiply the already projected input by an identity.
        return super().scan(projected, state, keep, valid)

    def fused_scan(self, projected: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """The chunk through PyTorch's fused GRU kernel (cuDNN on CUDA), no resets.

        The kernel multiplies its input by W_ih itself; the input here is already
        projected (a gathered row, bias included), so W_ih is the identity.
        """
        width = projected.shape[-1]
        identity = torch.eye(width, dtype=projected.dtype, device=projected.device)
        zeros = projected.new_zeros(width)
        recurrent_bias = torch.cat([zeros[: 2 * self.hidden_size], self.recurrent_bias_n])
        params = [identity, self.recurrent.T.contiguous(), zeros, recurrent_bias]
        outputs, last = torch._VF.gru(
            projected, state.unsqueeze(0), params, True, 1, 0.0, self.training, False, True
        )
        return outputs, last[0]

    def extra_seed_weights(self) -> dict[str, np.ndarray]:
        return {"b_hn": _numpy(self.recurrent_bias_n)}

    def load_extra_seed_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.recurrent_bias_n.copy_(torch.as_tensor(weights["b_hn"]))

    @torch.no_grad()
    def load_torch_gru(self, gru: nn.GRU, layer: int = 0) -> None:
        """Copy layer ``layer`` of an ``nn.GRU`` (gate order r, z, n), folding biases."""
        H = self.hidden_size
        w_ih = getattr(gru, f"weight_ih_l{layer}")
        w_hh = getattr(gru, f"weight_hh_l{layer}")
        zeros = torch.zeros(3 * H)
        b_ih = getattr(gru, f"bias_ih_l{layer}") if gru.bias else zeros
        b_hh = getattr(gru, f"bias_hh_l{layer}") if gru.bias else zeros
        self.input_weight.copy_(w_ih.T)
        self.recurrent.copy_(w_hh.T)
        self.bias.copy_(torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]]))
        self.recurrent_bias_n.copy_(b_hh[2 * H :])


class LSTMCell(Cell):
    """The LSTM (``lstm``) as PyTorch's ``nn.LSTM`` defines it (docs/MODELS.md), without
    peepholes or projection; its state is ``(a, c)``, here ``[B, 2H]`` = ``[a | c]``.

        i<t> = σ(W_i [a<t-1>, x<t>] + b_i)     f<t> = σ(W_f [a<t-1>, x<t>] + b_f)
        g<t> = tanh(W_g [a<t-1>, x<t>] + b_g)  o<t> = σ(W_o [a<t-1>, x<t>] + b_o)
        c<t> = f<t> * c<t-1> + i<t> * g<t>     a<t> = o<t> * tanh(c<t>)

    The gates are stacked i, f, g, o, as in ``weight_ih_l{k}``; ``b_g = b_ih + b_hh``.
    """

    gates = ("i", "f", "g", "o")
    recurrent_gates = ("i", "f", "g", "o")
    state_parts = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, *, embed: bool) -> None:
        super().__init__(input_size, hidden_size, embed=embed)
        self.reset_parameters()

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        H = self.hidden_size
        h, c = state[:, :H], state[:, H:]
        z = torch.addmm(projected, h, self.recurrent)
        i, f, o = (
            torch.sigmoid(z[:, :H]),
            torch.sigmoid(z[:, H : 2 * H]),
            torch.sigmoid(z[:, 3 * H :]),
        )
        g = torch.tanh(z[:, 2 * H : 3 * H])
        c = f * c + i * g
        return torch.cat([o * torch.tanh(c), c], dim=1)

    @torch.no_grad()
    def load_torch_lstm(self, lstm: nn.LSTM, layer: int = 0) -> None:
        """Copy layer ``layer`` of an ``nn.LSTM`` (gates i, f, g, o), folding the biases."""
        self.input_weight.copy_(getattr(lstm, f"weight_ih_l{layer}").T)
        self.recurrent.copy_(getattr(lstm, f"weight_hh_l{layer}").T)
        self.bias.copy_(_torch_bias(lstm, layer, 4 * self.hidden_size))


def _torch_bias(module: nn.RNNBase, layer: int, width: int) -> Tensor:
    """``b_ih + b_hh`` of one layer of a torch recurrent module (zeros without biases)."""
    if not module.bias:
        return torch.zeros(width)
    total: Tensor = getattr(module, f"bias_ih_l{layer}") + getattr(module, f"bias_hh_l{layer}")
    return total


# Manifest cell name -> implementation.
CELLS: dict[str, type[Cell]] = {
    "rnn-tanh": RNNTanhCell,
    "rnn-relu": RNNReluCell,
    "gru-simple": SimpleGRUCell,
    "gru": GRUCell,
    "gru-torch": TorchGRUCell,
    "lstm": LSTMCell,
}

ENCODER_PREFIX = "encoder."
CONDITION_KEY = "condition.A0"
EMBEDDING_KEY = "W_ex"


def _stack(
    cell: str, first_input: int, hidden_size: int, layers: int, *, embed: bool
) -> nn.ModuleList:
    return nn.ModuleList(
        CELLS[cell](first_input if i == 0 else hidden_size, hidden_size, embed=embed and i == 0)
        for i in range(layers)
    )


def layer_states(state: Tensor, layers: int, parts: int) -> list[Tensor]:
    """The package's state [S, B, H] as each layer's state [B, parts * H] (h, then c)."""
    if parts == 1:
        return list(state.unbind(0))
    return [
        torch.cat([state[p * layers + layer] for p in range(parts)], -1) for layer in range(layers)
    ]


def stack_states(states: list[Tensor], parts: int) -> Tensor:
    """Each layer's state [B, parts * H] as the package's state [S, B, H]."""
    if parts == 1:
        return torch.stack(states)
    # unflatten, not slices: the traced graph then keeps H a fixed dimension.
    split = [torch.unflatten(s, -1, (parts, -1)) for s in states]
    return torch.stack([s[:, p] for p in range(parts) for s in split])


def _run_stack(
    cells: nn.ModuleList,
    inputs: Tensor,
    state: Tensor,
    keep: Tensor | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Inputs [B, T] (tokens) or [B, T, n_x] through every layer -> (top activations
    [B, T, H], state [S, B, H])."""
    stack = cast("list[Cell]", list(cells))
    states = []
    parts = len(stack[0].state_parts)
    for cell, layer_state in zip(stack, layer_states(state, len(stack), parts), strict=True):
        outputs, last = cell.scan(cell.project(inputs), layer_state, keep, valid)
        inputs = cell.output(outputs)
        states.append(last)
    return inputs, stack_states(states, parts)


def valid_mask(lengths: Tensor, steps: int) -> Tensor:
    """[B, T] bool: True for the first ``lengths[b]`` steps of row b."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class RNNLanguageModel(nn.Module):
    """Stacked cells over a vocabulary or over float vectors; the state is [S, batch,
    hidden] (S = layers, or 2 * layers for the LSTM: h rows, then c rows).

    ``output_size`` (default: the vocabulary) is K, the width of the logits;
    ``encoder=True`` adds an encoder stack for seq2seq; ``conditions=C`` adds the
    table of C initial states of a conditional generator. ``input_size`` > 0 makes the
    input a vector of that many floats (``vocab_size`` is then 0); ``embedding_size`` > 0
    puts an embedding ``W_ex`` of that width before the first layer.
    """

    def __init__(
        self,
        cell: str,
        vocab_size: int,
        hidden_size: int,
        layers: int,
        *,
        output_size: int | None = None,
        encoder: bool = False,
        conditions: int = 0,
        input_size: int = 0,
        embedding_size: int = 0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; known: {sorted(CELLS)}")
        if bool(input_size) == bool(vocab_size):
            raise ValueError("give a vocabulary size (token inputs) or an input size (vectors)")
        if input_size and (embedding_size or encoder):
            raise ValueError("a vector input has no embedding and no encoder")
        self.cell_name, self.vocab_size = cell, vocab_size
        self.input_size, self.embedding_size = input_size, embedding_size
        self.hidden_size, self.layers = hidden_size, layers
        self.output_size = output_size or vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        first = input_size or embedding_size or vocab_size
        self.cells = _stack(cell, first, hidden_size, layers, embed=first == vocab_size)
        self.encoder = (
            _stack(cell, vocab_size, hidden_size, layers, embed=True) if encoder else None
        )
        self.state_rows = layers * len(CELLS[cell].state_parts)
        self.condition_table = (
            nn.Parameter(torch.randn(conditions, self.state_rows, hidden_size) * 0.1)
            if conditions
            else None
        )
        self.output = nn.Linear(hidden_size, self.output_size)  # W_ya, b_y

    @property
    def stack(self) -> list[Cell]:
        """The (decoder) cells, first layer first."""
        return cast("list[Cell]", list(self.cells))

    @property
    def input_kind(self) -> str:
        return "vectors" if self.input_size else "tokens"

    @property
    def conditions(self) -> int:
        return 0 if self.condition_table is None else int(self.condition_table.shape[0])

    def zero_state(self, batch: int) -> Tensor:
        parameter = self.output.weight
        return parameter.new_zeros(self.state_rows, batch, self.hidden_size)

    def initial_state(self, token: int, batch: int = 1) -> Tensor:
        """The state after feeding ``token`` (e.g. bos) to a zero state: [S, batch, H]."""
        tokens = torch.full((batch,), token, dtype=torch.int64, device=self.output.weight.device)
        return self.step(tokens, self.zero_state(batch))[1]

    def embed(self, inputs: Tensor) -> Tensor:
        """What the first layer reads: the tokens (whose projection is a gather), their
        embeddings ``W_ex x<t>``, or the input vectors as they are."""
        return inputs if self.embedding is None else self.embedding(inputs)

    def forward(
        self,
        tokens: Tensor,
        state: Tensor,
        keep: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """inputs [B, T] (or [B, T, n_x]), state [S, B, H] -> (logits [B, T, K], state).

        ``keep`` and ``valid`` as in ``Cell.scan``; with ``valid`` the returned state is
        each row's state after its last valid input.
        """
        top, new_state = _run_stack(self.cells, self.embed(tokens), state, keep, valid)
        logits: Tensor = self.output(top)
        return logits, new_state

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """inputs [B] (or [B, n_x]), state [S, B, H] -> (logits [B, K], state [S, B, H])."""
        inputs: Tensor = self.embed(tokens)
        states = []
        parts = len(self.stack[0].state_parts)
        for cell, layer_state in zip(
            self.stack, layer_states(state, self.layers, parts), strict=True
        ):
            new = cell.step(cell.project(inputs), layer_state)
            inputs = cell.output(new)
            states.append(new)
        logits: Tensor = self.output(inputs)
        return logits, stack_states(states, parts)

    def head(self, state: Tensor) -> Tensor:
        """The output for the current state, [S, B, H] -> logits [B, K]: the last
        layer's h (row layers - 1)."""
        logits: Tensor = self.output(state[self.layers - 1])
        return logits

    def sequence(self, tokens: Tensor, lengths: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """The sequence graph: inputs [B, T] (or [B, T, n_x]), lengths [B] (1..T), state
        [S, B, H] -> (logits [B, K] after each row's last input, state [S, B, H] after it)."""
        _, new_state = _run_stack(
            self.cells, self.embed(tokens), state, valid=valid_mask(lengths, tokens.shape[1])
        )
        return self.head(new_state), new_state

    def encode(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """The encoder graph: source tokens [B, T], lengths [B] -> decoder state [S, B, H]."""
        if self.encoder is None:
            raise ValueError("this model has no encoder")
        state = self.zero_state(tokens.shape[0])
        _, final = _run_stack(
            self.encoder, tokens, state, valid=valid_mask(lengths, tokens.shape[1])
        )
        return final

    def condition_state(self, condition: Tensor) -> Tensor:
        """The condition graph: condition indices [B] -> initial state [S, B, H]."""
        if self.condition_table is None:
            raise ValueError("this model has no conditions")
        return torch.tanh(self.condition_table[condition]).transpose(0, 1)

    # ------------------------------------------------------------------ seed notation

    def to_seed_weights(self) -> dict[str, np.ndarray]:
        """Weights in the notation of docs/MODELS.md: ``layer1.W_r`` ... ``W_ya``, ``b_y``;
        ``W_ex`` (n_e, n_x) for an embedding; ``encoder.layer1.W_r`` ... for an encoder,
        ``condition.A0`` [C, S, H] for conditions (``a<0> = tanh(A0[c])``)."""
        weights: dict[str, np.ndarray] = {}
        if self.embedding is not None:
            weights[EMBEDDING_KEY] = _numpy(self.embedding.weight.T)
        for prefix, cell in self._seed_layers():
            for key, value in cell.seed_weights().items():
                weights[prefix + key] = value
        if self.condition_table is not None:
            weights[CONDITION_KEY] = _numpy(self.condition_table)
        weights["W_ya"] = _numpy(self.output.weight)
        weights["b_y"] = _numpy(self.output.bias)
        return weights

    @torch.no_grad()
    def load_seed_weights(self, weights: dict[str, np.ndarray]) -> None:
        if self.embedding is not None:
            self.embedding.weight.copy_(torch.as_tensor(weights[EMBEDDING_KEY]).T)
        for prefix, cell in self._seed_layers():
            cell.load_seed_weights(
                {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            )
        if self.condition_table is not None:
            self.condition_table.copy_(torch.as_tensor(weights[CONDITION_KEY]))
        self.output.weight.copy_(torch.as_tensor(weights["W_ya"]))
        self.output.bias.copy_(torch.as_tensor(weights["b_y"]))

    def _seed_layers(self) -> Iterator[tuple[str, Cell]]:
        """(``layer1.``, cell), ... then (``encoder.layer1.``, cell), ...: each layer with
        the prefix of its seed-notation weights."""
        stacks = [("", self.cells)]
        if self.encoder is not None:
            stacks.append((ENCODER_PREFIX, self.encoder))
        for stack_prefix, cells in stacks:
            for i, cell in enumerate(cast("list[Cell]", list(cells)), start=1):
                yield f"{stack_prefix}layer{i}.", cell

    @classmethod
    def from_seed_weights(
        cls, cell: str, weights: dict[str, np.ndarray], *, vectors: bool = False
    ) -> RNNLanguageModel:
        """Rebuild a model from seed-notation weights alone (shapes give the sizes;
        ``vectors``: the first layer reads float vectors, not tokens)."""
        layers = len({k.split(".")[0] for k in weights if k.startswith("layer")})
        output_size, hidden_size = weights["W_ya"].shape
        first_gate = CELLS[cell].gates[0]
        first_input = weights[f"layer1.W_{first_gate}"].shape[1] - hidden_size
        embedding = weights.get(EMBEDDING_KEY)
        conditions = weights[CONDITION_KEY].shape[0] if CONDITION_KEY in weights else 0
        model = cls(
            cell,
            0 if vectors else (first_input if embedding is None else embedding.shape[1]),
            hidden_size,
            layers,
            output_size=output_size,
            encoder=any(k.startswith(ENCODER_PREFIX) for k in weights),
            conditions=conditions,
            input_size=first_input if vectors else 0,
            embedding_size=0 if embedding is None else first_input,
        )
        model.load_seed_weights(weights)
        return model


RNNModel = RNNLanguageModel  # every shape uses the same class
