"""The ONNX graphs of a model package (docs/model-package.md), written from the torch model.

``step``, ``head`` and ``condition`` are traced from the torch module (opset 17,
``dynamo=False``, a dynamic batch axis). ``sequence`` and ``encoder`` run a whole
sequence per call; they are built around one ONNX ``Scan`` whose body is the traced
recurrent half of one step of every layer:

    tokens [B, T] --Gather(input rows)+bias--> projected [B, T, G*H]   (all steps at once)
    lengths [B]   --Range(T) < lengths------> valid [B, T]
    Scan over t:  state <- where(valid[:, t], body(state, projected[:, t]), state)
    sequence: logits = W_ya state[L-1] + b_y (once, after the loop); encoder: the state

So the input products are hoisted out of the loop (one Gather for the whole prompt) and
the output layer runs once instead of once per token, and a row stops changing after its
last token. ``check_graph_shapes`` verifies every graph's inputs and outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from rnnserve_train.model import (
    Cell,
    GRUCell,
    LSTMCell,
    RNNLanguageModel,
    RNNReluCell,
    RNNTanhCell,
    SimpleGRUCell,
    TorchGRUCell,
    layer_states,
    stack_states,
)

OPSET = 17
BATCH_AXIS = "batch"
STEPS_AXIS = "steps"


class GraphShapeError(RuntimeError):
    """A graph does not have the inputs and outputs the package format needs."""


class _StepGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.step(tokens, state)


class _HeadGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: Tensor) -> Tensor:
        return self.model.head(state)


class _ConditionGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, condition: Tensor) -> Tensor:
        return self.model.condition_state(condition)


class _ScanBody(nn.Module):
    """One step of every layer of ``cells``, the first layer's input already projected;
    rows whose ``valid`` is false keep their state."""

    def __init__(self, cells: nn.ModuleList) -> None:
        super().__init__()
        self.cells = cells

    def forward(self, state: Tensor, projected: Tensor, valid: Tensor) -> Tensor:
        inputs = projected
        states = []
        stack = cast("list[Cell]", list(self.cells))
        parts = len(stack[0].state_parts)
        for layer, (cell, layer_state) in enumerate(
            zip(stack, layer_states(state, len(stack), parts), strict=True)
        ):
            if layer:
                inputs = cell.project(inputs)
            new = cell.step(inputs, layer_state)
            inputs = cell.output(new)
            states.append(new)
        new_state = stack_states(states, parts)
        return torch.where(valid.view(1, -1, 1), new_state, state)


def trace(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    *,
    inputs: list[str],
    outputs: list[str],
    batch_dims: Mapping[str, int],
) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (see docs/FACTS.md); its deprecation notice is not news.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        # A user's step module may slice with a stride; the exporter only says it did
        # not fold those slices into constants.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {dim: BATCH_AXIS} for name, dim in batch_dims.items()},
            opset_version=OPSET,
            dynamo=False,
        )


# A batch of 2, not 1, so the tracer cannot fold the batch dimension into a constant.
_TRACE_BATCH = 2


def input_name(model: RNNLanguageModel) -> str:
    """The graphs' name of the model's input: ``tokens`` or ``inputs`` (vectors)."""
    return "inputs" if model.input_size else "tokens"


def example_inputs(model: RNNLanguageModel, *steps: int) -> Tensor:
    """Zero inputs of the model's kind for ``_TRACE_BATCH`` rows (and ``steps``)."""
    if model.input_size:
        return torch.zeros(_TRACE_BATCH, *steps, model.input_size)
    return torch.zeros(_TRACE_BATCH, *steps, dtype=torch.int64)


def export_step(model: RNNLanguageModel, path: Path) -> None:
    name = input_name(model)
    trace(
        _StepGraph(model),
        (example_inputs(model), model.zero_state(_TRACE_BATCH)),
        path,
        inputs=[name, "state"],
        outputs=["logits", "state_out"],
        batch_dims={name: 0, "state": 1, "logits": 0, "state_out": 1},
    )


def export_head(model: RNNLanguageModel, path: Path) -> None:
    trace(
        _HeadGraph(model),
        (model.zero_state(_TRACE_BATCH),),
        path,
        inputs=["state"],
        outputs=["logits"],
        batch_dims={"state": 1, "logits": 0},
    )


def export_condition(model: RNNLanguageModel, path: Path) -> None:
    trace(
        _ConditionGraph(model),
        (torch.zeros(_TRACE_BATCH, dtype=torch.int64),),
        path,
        inputs=["condition"],
        outputs=["state"],
        batch_dims={"condition": 0, "state": 1},
    )


def _scan_body(cells: nn.ModuleList, rows: int, hidden: int, scratch: Path) -> onnx.GraphProto:
    """The traced body, every name prefixed so nothing shadows the outer graph."""
    first = cast(Cell, cells[0])
    width = first.bias.shape[0]
    path = scratch / "scan-body.onnx"
    trace(
        _ScanBody(cells),
        (
            torch.zeros(rows, _TRACE_BATCH, hidden),
            torch.zeros(_TRACE_BATCH, width),
            torch.ones(_TRACE_BATCH, dtype=torch.bool),
        ),
        path,
        inputs=["state", "projected", "valid"],
        outputs=["state_next"],
        batch_dims={"state": 1, "projected": 0, "valid": 0, "state_next": 1},
    )
    graph = onnx.load(str(path)).graph
    path.unlink()
    # The tracer's intermediate shapes name the batch of the traced call; Scan's body
    # sees one time step, so let onnxruntime infer them afresh.
    del graph.value_info[:]
    return _prefixed(graph, "body/")


def _prefixed(graph: onnx.GraphProto, prefix: str) -> onnx.GraphProto:
    def rename(name: str) -> str:
        return prefix + name if name else name

    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename(value.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    graph.name = prefix.strip("/")
    return graph


class _Builder:
    """The nodes and initializers of a hand-built graph. A model parameter becomes an
    initializer named as in ``model.named_parameters()``; every helper returns the name
    of the value it adds."""

    def __init__(self, model: RNNLanguageModel) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._names = {id(p): name for name, p in model.named_parameters()}
        self._count = 0

    def parameter(self, tensor: Tensor) -> str:
        name = self._names[id(tensor)]
        if name not in self.initializers:
            array = tensor.detach().cpu().numpy()
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def integers(self, values: int | Sequence[int]) -> str:
        """An int64 scalar (an int) or vector (a sequence)."""
        array = np.array(values, dtype=np.int64)
        name = (
            "int64_"
            + ("scalar_" if array.ndim == 0 else "")
            + "_".join(str(v).replace("-", "minus") for v in array.reshape(-1))
        )
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str = "", **attributes: Any) -> str:
        return self.ops(op_type, inputs, 1, [output] if output else None, **attributes)[0]

    def ops(
        self,
        op_type: str,
        inputs: Sequence[str],
        count: int,
        outputs: list[str] | None = None,
        **attributes: Any,
    ) -> list[str]:
        self._count += 1
        names = outputs or [f"{op_type.lower()}{self._count}_{i}" for i in range(count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names

    def filled(self, shape: Sequence[int], value: float) -> str:
        """A float tensor of ``shape`` holding ``value`` everywhere (made when the session
        starts: nothing stored)."""
        fill = helper.make_tensor("value", TensorProto.FLOAT, [1], [value])
        return self.op("ConstantOfShape", [self.integers(list(shape))], value=fill)

    def split(self, tensor: str, parts: int, axis: int) -> list[str]:
        """``parts`` equal blocks of ``tensor`` along ``axis``."""
        return [tensor] if parts == 1 else self.ops("Split", [tensor], parts, axis=axis)


SEQUENCE_FORMS = ("native", "scan")


def export_sequence(
    model: RNNLanguageModel, path: Path, *, encoder: bool, form: str = "native"
) -> None:
    """The ``sequence`` graph (decoder cells, state given, logits out) or the ``encoder``
    graph (encoder cells, zero state, state out).

    ``form="native"``: each layer is one ONNX ``RNN``/``GRU``/``LSTM`` operator
    (``native_form``), the fastest on onnxruntime's CPU provider. ``form="scan"``: a
    ``Scan`` over the traced step of every layer, made of primitives only, for providers
    whose recurrent operators implement another variant (see docs/models.md). Either
    reads the model's parameters as they are (what the operators need is derived from
    them in the graph), so a package's graphs share every weight (``sharing.py``).
    """
    if form not in SEQUENCE_FORMS:
        raise GraphShapeError(f"sequence form {form!r} is not one of {SEQUENCE_FORMS}")
    cells = model.encoder if encoder else model.cells
    if cells is None:
        raise GraphShapeError("the model has no encoder")
    S, H = model.state_rows, model.hidden_size
    g = _Builder(model)
    x = "tokens" if encoder else input_name(model)
    sequence_input = (
        helper.make_tensor_value_info(
            x, TensorProto.FLOAT, [BATCH_AXIS, STEPS_AXIS, model.input_size]
        )
        if x == "inputs"
        else helper.make_tensor_value_info(x, TensorProto.INT64, [BATCH_AXIS, STEPS_AXIS])
    )
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, [BATCH_AXIS])
    state_type: list[str | int] = [S, BATCH_AXIS, H]
    if encoder:
        batch = g.op("Gather", [g.op("Shape", [x]), g.integers(0)], axis=0)
        shape = g.op(
            "Concat",
            [g.integers([S]), g.op("Unsqueeze", [batch, g.integers([0])]), g.integers([H])],
            axis=0,
        )
        zero = helper.make_tensor("zero_float", TensorProto.FLOAT, [1], [0.0])
        start = g.op("ConstantOfShape", [shape], value=zero)
        graph_inputs = [sequence_input, lengths]
    else:
        start = "state"
        state = helper.make_tensor_value_info("state", TensorProto.FLOAT, state_type)
        graph_inputs = [sequence_input, lengths, state]
    if form == "native":
        final = _native_stack(g, model, cells, x, start)
    else:
        final = _scan_stack(g, model, cells, x, start, scratch=path.parent)
    state_name = "state" if encoder else "state_out"
    g.op("Identity", [final], state_name)
    outputs = [helper.make_tensor_value_info(state_name, TensorProto.FLOAT, state_type)]
    if not encoder:
        top = g.op("Gather", [state_name, g.integers(model.layers - 1)], axis=0)
        weight, bias = g.parameter(model.output_weight), g.parameter(model.output_bias_vector)
        g.op("Gemm", [top, weight, bias], "logits", transB=1)
        logits_type: list[str | int] = [BATCH_AXIS, model.output_size]
        outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_type))
    graph = helper.make_graph(
        g.nodes,
        "encoder" if encoder else "sequence",
        graph_inputs,
        outputs,
        initializer=list(g.initializers.values()),
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnserve-train"
    )
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))


def _embedded(g: _Builder, model: RNNLanguageModel, x: str) -> str | None:
    """The embedded tokens [B, T, d] where the model has an embedding (that the encoder
    shares); the input vectors themselves; None for tokens a first layer gathers itself
    (the one-hot product)."""
    if x == "inputs":
        return x
    if model.embedding is None:
        return None
    return g.op("Gather", [g.parameter(model.embedding.weight), x])


def _scan_stack(
    g: _Builder,
    model: RNNLanguageModel,
    cells: nn.ModuleList,
    x: str,
    state: str,
    *,
    scratch: Path,
) -> str:
    """Nodes running every layer over the input ``x`` and ``lengths`` as one Scan of the
    traced step; returns the name of the final state [S, B, H]."""
    first = cast(Cell, cells[0])
    features = _embedded(g, model, x)
    if features is None:  # the one-hot product: a row of the input weight
        product = g.op("Gather", [g.parameter(first.input_weight), x])
    else:
        product = g.op("MatMul", [features, g.parameter(first.input_weight)])
    projected = g.op("Add", [product, g.parameter(first.bias)])
    steps = g.op("Gather", [g.op("Shape", [x]), g.integers(1)], axis=0)
    positions = g.op("Range", [g.integers(0), steps, g.integers(1)])
    valid = g.op(
        "Less",
        [
            g.op("Unsqueeze", [positions, g.integers([0])]),
            g.op("Unsqueeze", ["lengths", g.integers([1])]),
        ],
    )
    body = _scan_body(cells, model.state_rows, model.hidden_size, scratch)
    # The body reads its weights from the enclosing graph, so they are stored (and
    # shared) like every other initializer.
    for tensor in body.initializer:
        g.initializers[tensor.name] = tensor
    del body.initializer[:]
    return g.op(
        "Scan", [state, projected, valid], body=body, num_scan_inputs=2, scan_input_axes=[1, 1]
    )


# ------------------------------------------------------------------ native recurrent ops


@dataclass(frozen=True)
class NativeForm:
    """A cell as an ONNX ``RNN``, ``GRU`` or ``LSTM`` operator: for each gate slot of the
    operator, in its order, the cell's gate and the sign its weights take there, or None
    for a gate held open (zero weights, bias ``OPEN_GATE_BIAS``); ``recurrent_bias``: the
    cell's parameter that is the operator's recurrent bias of the last slot."""

    op_type: str
    attributes: dict[str, Any]
    slots: tuple[tuple[str, float] | None, ...]
    recurrent_bias: str | None = None


# Γ_r = σ(100) is exactly 1.0 in float32: the gru-simple cell as a GRU whose reset gate
# is always open.
OPEN_GATE_BIAS = 100.0


def native_form(cell: Cell) -> NativeForm:
    """The ONNX operator computing ``cell`` exactly (docs/MODELS.md):

    * ``rnn-tanh``/``rnn-relu``: ``RNN`` with activation Tanh/Relu;
    * ``gru``: ``GRU`` with ``linear_before_reset=0`` (the course form); its gate order is
      z, r, h and its z weights the *old* state, so ``z = 1 - Γ_u``: W_z = -W_u, b_z = -b_u;
    * ``gru-simple``: the same with the reset gate held open;
    * ``gru-torch``: ``GRU`` with ``linear_before_reset=1`` (PyTorch's form), b_hn as Rb_h;
    * ``lstm``: ``LSTM`` (PyTorch's equations), its gates in ONNX's order i, o, f, c (c:
      the candidate, our g).
    """
    if isinstance(cell, RNNTanhCell):
        activation = "Relu" if isinstance(cell, RNNReluCell) else "Tanh"
        return NativeForm("RNN", {"activations": [activation]}, (("a", 1.0),))
    if isinstance(cell, GRUCell):
        return NativeForm("GRU", {"linear_before_reset": 0}, (("u", -1.0), ("r", 1.0), ("c", 1.0)))
    if isinstance(cell, SimpleGRUCell):
        return NativeForm("GRU", {"linear_before_reset": 0}, (("u", -1.0), None, ("c", 1.0)))
    if isinstance(cell, TorchGRUCell):
        slots = (("z", 1.0), ("r", 1.0), ("n", 1.0))
        return NativeForm("GRU", {"linear_before_reset": 1}, slots, "recurrent_bias_n")
    if isinstance(cell, LSTMCell):
        return NativeForm("LSTM", {}, (("i", 1.0), ("o", 1.0), ("f", 1.0), ("g", 1.0)))
    raise GraphShapeError(f"no native ONNX operator for {type(cell).__name__}")


def _native_stack(
    g: _Builder, model: RNNLanguageModel, cells: nn.ModuleList, x: str, state: str
) -> str:
    """Nodes running every layer over ``x``/``lengths`` from ``state`` [S, B, H]; returns
    the name of the final state [S, B, H] (h of every layer, then an LSTM's c)."""
    stack = cast("list[Cell]", list(cells))
    L = len(stack)
    parts = stack[0].state_parts
    seq_lens = g.op("Cast", ["lengths"], to=TensorProto.INT32)
    layer_inputs, matrix, features = _first_layer_inputs(g, model, stack[0], x)
    finals: dict[str, list[str]] = {part: [] for part in parts}
    for layer, cell in enumerate(stack):
        form = native_form(cell)
        if layer:
            matrix, features = g.parameter(cell.input_weight), cell.input_size
        # This layer's rows of the state: its h (and an LSTM's c, L rows further on).
        initial = [
            g.op("Slice", [state, g.integers([p * L + layer]), g.integers([p * L + layer + 1])])
            for p in range(len(parts))
        ]
        outputs, *last = g.ops(
            form.op_type,
            [
                layer_inputs,
                _operator_inputs(g, cell, form, matrix, features),
                _operator_recurrent(g, cell, form),
                _operator_biases(g, cell, form),
                seq_lens,
                *initial,
            ],
            1 + len(parts),
            hidden_size=cell.hidden_size,
            **form.attributes,
        )
        layer_inputs = g.op("Squeeze", [outputs, g.integers([1])])
        for part, final in zip(parts, last, strict=True):
            finals[part].append(final)
    return g.op("Concat", [name for part in parts for name in finals[part]], axis=0)


def _first_layer_inputs(
    g: _Builder, model: RNNLanguageModel, first: Cell, x: str
) -> tuple[str, str, int]:
    """The first layer's time-major inputs [T, B, I], the matrix [I, gates * H] (the
    cell's layout) whose rows their features weigh, and I."""
    width = len(native_form(first).slots) * first.hidden_size
    embedded = _embedded(g, model, x)
    if embedded is not None:  # embedded tokens or input vectors
        features = embedded
        matrix, size = g.parameter(first.input_weight), first.input_size
    elif first.input_size <= width:
        # The one-hot input itself: the product picks one column of W, exactly.
        values = g.op("Concat", [g.filled([1], 0.0), g.filled([1], 1.0)], axis=0)
        features = g.op("OneHot", [x, g.integers(first.input_size), values], axis=-1)
        matrix, size = g.parameter(first.input_weight), first.input_size
    else:
        # A vocabulary wider than the gates: gather each token's row (the embedding
        # lookup) and let the operator multiply it by a permutation of the identity.
        features = g.op("Gather", [g.parameter(first.input_weight), x])
        size = first.input_weight.shape[1]
        matrix = g.op("EyeLike", [g.filled([size, size], 0.0)])
    return g.op("Transpose", [features], perm=[1, 0, 2]), matrix, size


def _signed(g: _Builder, tensor: str, sign: float) -> str:
    return tensor if sign > 0 else g.op("Neg", [tensor])


def _operator_inputs(g: _Builder, cell: Cell, form: NativeForm, matrix: str, features: int) -> str:
    """The operator's W [1, slots * H, I] from ``matrix`` [I, gates * H] (its column
    block g is W_gx^T)."""
    blocks = g.split(matrix, len(cell.gates), axis=1)
    rows = [
        g.filled([cell.hidden_size, features], 0.0)
        if slot is None
        else _signed(
            g, g.op("Transpose", [blocks[cell.gates.index(slot[0])]], perm=[1, 0]), slot[1]
        )
        for slot in form.slots
    ]
    return g.op("Unsqueeze", [g.op("Concat", rows, axis=0), g.integers([0])])


def _operator_recurrent(g: _Builder, cell: Cell, form: NativeForm) -> str:
    """The operator's R [1, slots * H, H]: W_ga of each slot's gate."""
    H = cell.hidden_size
    shared = g.split(g.parameter(cell.recurrent), len(cell.recurrent_gates), axis=1)

    def transposed(gate: str) -> str:  # W_ga^T [H, H]
        if gate in cell.recurrent_gates:
            return shared[cell.recurrent_gates.index(gate)]
        return g.parameter(getattr(cell, f"recurrent_{gate}"))

    rows = [
        g.filled([H, H], 0.0)
        if slot is None
        else _signed(g, g.op("Transpose", [transposed(slot[0])], perm=[1, 0]), slot[1])
        for slot in form.slots
    ]
    return g.op("Unsqueeze", [g.op("Concat", rows, axis=0), g.integers([0])])


def _operator_biases(g: _Builder, cell: Cell, form: NativeForm) -> str:
    """The operator's B [1, 2 * slots * H]: the input biases of the slots, then their
    recurrent biases (zero, except ``form.recurrent_bias``)."""
    H = cell.hidden_size
    parts = g.split(g.parameter(cell.bias), len(cell.gates), axis=0)
    inputs = [
        g.filled([H], OPEN_GATE_BIAS)
        if slot is None
        else _signed(g, parts[cell.gates.index(slot[0])], slot[1])
        for slot in form.slots
    ]
    recurrent = [g.filled([H], 0.0) for _ in form.slots]
    if form.recurrent_bias is not None:
        recurrent[-1] = g.parameter(getattr(cell, form.recurrent_bias))
    return g.op("Unsqueeze", [g.op("Concat", inputs + recurrent, axis=0), g.integers([0])])


def check_graph_shapes(path: Path, expected: Mapping[str, tuple[int | str, ...]]) -> None:
    """Each input/output has the expected symbolic (named) and static dims."""
    graph = onnx.load(str(path)).graph
    for value in [*graph.input, *graph.output]:
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim
        )
        if dims != expected[value.name]:
            raise GraphShapeError(
                f"{path.name}: {value.name} has shape {list(dims)}, "
                f"expected {list(expected[value.name])}"
            )


def expected_shapes(model: RNNLanguageModel) -> dict[str, tuple[int | str, ...]]:
    """The dims of every graph input/output name, as the package format requires."""
    S, H, K = model.state_rows, model.hidden_size, model.output_size
    return {
        "condition": (BATCH_AXIS,),
        "lengths": (BATCH_AXIS,),
        "state": (S, BATCH_AXIS, H),
        "state_out": (S, BATCH_AXIS, H),
        "logits": (BATCH_AXIS, K),
    }


def expected_for(kind: str, model: RNNLanguageModel) -> dict[str, tuple[int | str, ...]]:
    shapes = expected_shapes(model)
    steps: tuple[str, ...] = (STEPS_AXIS,) if kind in ("sequence", "encoder") else ()
    shapes["tokens"] = (BATCH_AXIS, *steps)
    shapes["inputs"] = (BATCH_AXIS, *steps, model.input_size)
    return shapes
