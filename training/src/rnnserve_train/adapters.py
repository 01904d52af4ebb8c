"""What ``package_torch`` accepts, read from the module itself: the two shapes of module
of README "Serve your own model".

* ``StackModule``: the common stack ``[nn.Embedding | nn.Linear] -> nn.RNN | nn.GRU |
  nn.LSTM -> [nn.Linear]`` (children in that order; ``nn.Dropout`` anywhere, ignored at
  inference). It becomes an ``RNNLanguageModel`` with the same weights, so the package
  gets the known cell (``rnn-tanh``, ``rnn-relu``, ``gru-torch``, ``lstm``), its
  seed-notation weights, the numpy reference and the sequence graph. Its ``forward(x)``
  takes a batch of sequences in the recurrent layer's layout (``batch_first`` or not)
  and returns every step's output (or a tuple whose first element is that).
* ``StepModule``: anything with ``step(x_t, state) -> (y_t, state)`` and
  ``initial_state(batch)``, ``state`` a tensor or a tuple of tensors (optionally
  ``head(state) -> y``). Its state is packed into the package's one array [S, B, W].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional

from rnnserve_server.manifest import StatePart, StateSpec
from rnnserve_train.model import CELLS, Cell, LSTMCell, RNNLanguageModel, TorchGRUCell


class UnsupportedModule(ValueError):
    """A module package_torch cannot serve; the message says why and what would do."""


def _as_tuple(state: Any) -> tuple[Tensor, ...]:
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


# ---------------------------------------------------------------------- the common stack


@dataclass(frozen=True)
class StackModule:
    """A user's stack, read: its recurrent layer, input layer and head, as children."""

    module: nn.Module
    recurrent: nn.RNNBase
    input_layer: nn.Module | None  # nn.Embedding or nn.Linear
    head: nn.Linear | None

    @property
    def cell(self) -> str:
        return cell_name(self.recurrent)

    @property
    def reads_tokens(self) -> bool:
        return isinstance(self.input_layer, nn.Embedding)

    def forward_outputs(self, inputs: Tensor) -> Tensor:
        """The module's own forward on batch-first inputs [B, T(, n_x)]: [B, T, K]."""
        batch_first = self.recurrent.batch_first
        given = inputs if batch_first else inputs.transpose(0, 1)
        result = self.module(given)
        outputs = result[0] if isinstance(result, (tuple, list)) else result
        if not isinstance(outputs, Tensor) or outputs.dim() != 3:
            raise UnsupportedModule(
                f"{type(self.module).__name__}.forward must return every step's output, "
                "[B, T, K] (or [T, B, K] when batch_first is False), or a tuple whose first "
                f"element is that; it returned {_describe(result)}"
            )
        return outputs if batch_first else outputs.transpose(0, 1)

    def to_model(self, vocabulary_size: int) -> RNNLanguageModel:
        """An RNNLanguageModel computing the same function with the same weights."""
        rnn = self.recurrent
        H, L = rnn.hidden_size, rnn.num_layers
        embedding_size, input_size = 0, 0
        if isinstance(self.input_layer, nn.Embedding):
            embedding_size = self.input_layer.embedding_dim
        elif vocabulary_size:  # tokens read one-hot by the first layer
            if rnn.input_size != vocabulary_size:
                raise UnsupportedModule(
                    f"the recurrent layer reads {rnn.input_size} inputs but the vocabulary "
                    f"has {vocabulary_size} tokens: put an nn.Embedding before it"
                )
        else:
            input_size = (
                self.input_layer.in_features
                if isinstance(self.input_layer, nn.Linear)
                else rnn.input_size
            )
        K = self.head.out_features if self.head is not None else H
        model = RNNLanguageModel(
            self.cell,
            0 if input_size else vocabulary_size,
            H,
            L,
            output_size=K,
            input_size=input_size,
            embedding_size=embedding_size,
        )
        with torch.no_grad():
            if isinstance(self.input_layer, nn.Embedding):
                assert model.embedding is not None
                model.embedding.weight.copy_(self.input_layer.weight)
            for layer, cell in enumerate(model.stack):
                if layer == 0 and isinstance(self.input_layer, nn.Linear):
                    _load_projected(cell, rnn, self.input_layer)
                else:
                    _load_layer(cell, rnn, layer)
            if self.head is not None:
                model.output_weight.copy_(self.head.weight)
                model.output_bias_vector.copy_(
                    self.head.bias if self.head.bias is not None else torch.zeros(K)
                )
            else:  # the top layer's state is the output
                model.output_weight.copy_(torch.eye(H))
                model.output_bias_vector.zero_()
        return model.eval()


def _load_projected(cell: Cell, rnn: nn.RNNBase, projection: nn.Linear) -> None:
    """The first layer behind an input projection ``x' = W_p x + b_p``, which feeds only
    its input products: folded into them (``W_gx W_p`` and ``b_g + W_gx b_p``)."""
    reading = CELLS[cell_name(rnn)](rnn.input_size, rnn.hidden_size, embed=False)
    _load_layer(reading, rnn, 0)
    state = reading.state_dict()
    bias = projection.bias if projection.bias is not None else torch.zeros(rnn.input_size)
    state["bias"] = reading.bias + bias @ reading.input_weight
    state["input_weight"] = projection.weight.T @ reading.input_weight
    cell.load_state_dict(state)


def cell_name(rnn: nn.RNNBase) -> str:
    """The cell of docs/MODELS.md that a torch recurrent module computes."""
    if isinstance(rnn, nn.LSTM):
        return "lstm"
    if isinstance(rnn, nn.GRU):
        return "gru-torch"  # PyTorch's GRU variant, not the course GRU (docs/MODELS.md)
    return "rnn-relu" if rnn.nonlinearity == "relu" else "rnn-tanh"


def _load_layer(cell: nn.Module, rnn: nn.RNNBase, layer: int) -> None:
    """Layer ``layer`` of a torch recurrent module into one of our cells."""
    if isinstance(cell, LSTMCell):
        assert isinstance(rnn, nn.LSTM)
        cell.load_torch_lstm(rnn, layer)
    elif isinstance(cell, TorchGRUCell):
        assert isinstance(rnn, nn.GRU)
        cell.load_torch_gru(rnn, layer)
    else:
        width = rnn.hidden_size
        cell.input_weight.copy_(getattr(rnn, f"weight_ih_l{layer}").T)  # type: ignore[operator]
        cell.recurrent.copy_(getattr(rnn, f"weight_hh_l{layer}").T)  # type: ignore[operator]
        if rnn.bias:
            b = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        else:
            b = torch.zeros(width)
        cell.bias.copy_(b)  # type: ignore[operator]


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


_IGNORED = (nn.Dropout,)


def read_stack(module: nn.Module) -> StackModule:
    """The common stack of ``module``'s children, or UnsupportedModule saying why not."""
    name = type(module).__name__
    children = [
        (child_name, child)
        for child_name, child in module.named_children()
        if not isinstance(child, _IGNORED)
    ]
    recurrent = [(n, c) for n, c in children if isinstance(c, nn.RNNBase)]
    if len(recurrent) != 1:
        raise UnsupportedModule(
            f"{name} has {len(recurrent)} recurrent children (nn.RNN, nn.GRU, nn.LSTM); the "
            "common stack has exactly one (several layers go in its num_layers). Any other "
            "module can implement step(x_t, state) and initial_state(batch)"
        )
    rnn_name, rnn = recurrent[0]
    if rnn.bidirectional:
        raise UnsupportedModule(
            f"{name}.{rnn_name} is bidirectional: its backward direction reads each sequence "
            "from its end, which a stream fed one input at a time does not have yet, so it "
            "cannot be stepped. Serve a model trained with bidirectional=False"
        )
    if isinstance(rnn, nn.LSTM) and rnn.proj_size:
        raise UnsupportedModule(
            f"{name}.{rnn_name} has proj_size={rnn.proj_size}: LSTM projections are not a "
            "cell rnnserve knows; implement step() and initial_state() to serve it"
        )
    position = [n for n, _ in children].index(rnn_name)
    before, after = children[:position], children[position + 1 :]
    if len(before) > 1 or (before and not isinstance(before[0][1], (nn.Embedding, nn.Linear))):
        raise UnsupportedModule(
            f"{name}: before {rnn_name} the common stack has at most one nn.Embedding or "
            f"nn.Linear, not {[f'{n} ({type(c).__name__})' for n, c in before]}"
        )
    if len(after) > 1 or (after and not isinstance(after[0][1], nn.Linear)):
        raise UnsupportedModule(
            f"{name}: after {rnn_name} the common stack has at most one nn.Linear head, not "
            f"{[f'{n} ({type(c).__name__})' for n, c in after]}"
        )
    input_layer = before[0][1] if before else None
    if isinstance(input_layer, nn.Embedding) and input_layer.max_norm is not None:
        raise UnsupportedModule(
            f"{name}.{before[0][0]} has max_norm set: it rescales rows when they are looked "
            "up, so its weights change with the inputs seen"
        )
    head = cast(nn.Linear, after[0][1]) if after else None
    return StackModule(module=module, recurrent=rnn, input_layer=input_layer, head=head)


# ---------------------------------------------------------------------- step() modules


@dataclass(frozen=True)
class StateTensor:
    """How one tensor of a step module's state lies in the package's [S, B, W] array."""

    batch_axis: int
    shape: tuple[int, ...]  # without the batch axis
    rows: int
    width: int


class StepModule:
    """A module with ``step`` and ``initial_state``; its state packed as [S, B, W]."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.user: Any = cast(Any, module)  # its step, initial_state and head, untyped
        self.name = type(module).__name__
        for method in ("step", "initial_state"):
            if not callable(getattr(module, method, None)):
                raise UnsupportedModule(
                    f"{self.name} is neither the common stack nor a step module: it has no "
                    f"{method}() (see README, 'Serve your own model')"
                )
        with torch.no_grad():
            two = _as_tuple(self.user.initial_state(2))
            three = _as_tuple(self.user.initial_state(3))
        if len(two) != len(three) or not all(isinstance(t, Tensor) for t in (*two, *three)):
            raise UnsupportedModule(
                f"{self.name}.initial_state(batch) must return a tensor or a tuple of tensors"
            )
        self.tensors = tuple(
            self._layout(i, a, b) for i, (a, b) in enumerate(zip(two, three, strict=True))
        )
        self.width = max(t.width for t in self.tensors)
        self.tuple_state = isinstance(self.user.initial_state(1), (tuple, list))
        self.has_head = callable(getattr(module, "head", None))

    def _layout(self, index: int, two: Tensor, three: Tensor) -> StateTensor:
        differing = [
            axis for axis, (a, b) in enumerate(zip(two.shape, three.shape, strict=False)) if a != b
        ]
        if two.dim() != three.dim() or len(differing) != 1 or two.shape[differing[0]] != 2:
            raise UnsupportedModule(
                f"{self.name}.initial_state: state tensor {index} has shapes "
                f"{list(two.shape)} and {list(three.shape)} for batches of 2 and 3; each "
                "tensor needs exactly one batch axis"
            )
        if two.dtype != torch.float32:
            raise UnsupportedModule(
                f"{self.name}.initial_state: state tensor {index} is {two.dtype}, not float32"
            )
        axis = differing[0]
        shape = tuple(d for i, d in enumerate(two.shape) if i != axis)
        width = shape[-1] if shape else 1
        rows = math.prod(shape[:-1]) if shape else 1
        return StateTensor(axis, shape, rows, width)

    @property
    def state_spec(self) -> StateSpec:
        names = (
            ["state"] if len(self.tensors) == 1 else [f"state{i}" for i in range(len(self.tensors))]
        )
        return StateSpec(
            width=self.width,
            parts=tuple(
                StatePart(n, t.rows, None) for n, t in zip(names, self.tensors, strict=True)
            ),
        )

    def pack(self, state: Any) -> Tensor:
        """The module's state as the package's [S, B, W]."""
        rows = []
        for tensor, layout in zip(_as_tuple(state), self.tensors, strict=True):
            batch_first = tensor.movedim(layout.batch_axis, 0)
            flat = batch_first.reshape(batch_first.shape[0], layout.rows, layout.width)
            flat = functional.pad(flat, (0, self.width - layout.width))
            rows.append(flat.transpose(0, 1))
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def unpack(self, packed: Tensor) -> Any:
        """The package's [S, B, W] as the module's state (a tensor or a tuple)."""
        tensors = []
        start = 0
        for layout in self.tensors:
            rows = packed[start : start + layout.rows, :, : layout.width].transpose(0, 1)
            start += layout.rows
            shaped = rows.reshape(-1, *layout.shape) if layout.shape else rows.reshape(-1)
            tensors.append(shaped.movedim(0, layout.batch_axis))
        return tuple(tensors) if self.tuple_state else tensors[0]

    def step(self, inputs: Tensor, packed: Tensor) -> tuple[Tensor, Tensor]:
        outputs, state = self.user.step(inputs, self.unpack(packed))
        return outputs, self.pack(state)

    def head(self, packed: Tensor) -> Tensor:
        result: Tensor = self.user.head(self.unpack(packed))
        return result

    def initial(self) -> Tensor:
        """The initial state of one session, [S, W]."""
        with torch.no_grad():
            return self.pack(self.user.initial_state(1))[:, 0]


class StepGraph(nn.Module):
    """``StepModule.step`` as a module to trace: (x, state [S, B, W]) -> (y, state)."""

    def __init__(self, adapter: StepModule) -> None:
        super().__init__()
        self.adapter = adapter
        self.inner = adapter.module  # registered, so its parameters are the graph's

    def forward(self, inputs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.adapter.step(inputs, state)


class HeadGraph(nn.Module):
    def __init__(self, adapter: StepModule) -> None:
        super().__init__()
        self.adapter = adapter
        self.inner = adapter.module

    def forward(self, state: Tensor) -> Tensor:
        return self.adapter.head(state)


def check_batch(outputs: Tensor, batch: int, where: str) -> None:
    if outputs.dim() != 2 or outputs.shape[0] != batch:
        raise UnsupportedModule(
            f"{where} must return outputs of shape [batch, K]; got {list(outputs.shape)}"
        )
