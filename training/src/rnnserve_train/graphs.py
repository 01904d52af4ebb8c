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
from collections.abc import Mapping
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


def _constant(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(array, order="C"), name)


SEQUENCE_FORMS = ("native", "scan")


def export_sequence(
    model: RNNLanguageModel, path: Path, *, encoder: bool, form: str = "native"
) -> None:
    """The ``sequence`` graph (decoder cells, state given, logits out) or the ``encoder``
    graph (encoder cells, zero state, state out).

    ``form="native"``: each layer is one ONNX ``RNN``/``GRU`` operator (``native_layer``),
    the fastest on onnxruntime's CPU provider. ``form="scan"``: a ``Scan`` over the traced
    step of every layer, made of primitives only, for providers whose recurrent operators
    implement another variant (see docs/models.md).
    """
    if form not in SEQUENCE_FORMS:
        raise GraphShapeError(f"sequence form {form!r} is not one of {SEQUENCE_FORMS}")
    cells = model.encoder if encoder else model.cells
    if cells is None:
        raise GraphShapeError("the model has no encoder")
    S, H = model.state_rows, model.hidden_size
    x = "tokens" if encoder else input_name(model)
    inits = [
        _constant("zero", np.array(0, dtype=np.int64)),
        _constant("one", np.array(1, dtype=np.int64)),
        _constant("axis0", np.array([0], dtype=np.int64)),
        _constant("axis1", np.array([1], dtype=np.int64)),
    ]
    nodes = [helper.make_node("Shape", [x], ["tokens_shape"])]
    tokens = (
        helper.make_tensor_value_info(
            x, TensorProto.FLOAT, [BATCH_AXIS, STEPS_AXIS, model.input_size]
        )
        if x == "inputs"
        else helper.make_tensor_value_info(x, TensorProto.INT64, [BATCH_AXIS, STEPS_AXIS])
    )
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, [BATCH_AXIS])
    state_type: list[str | int] = [S, BATCH_AXIS, H]
    first_inputs = _first_layer_inputs(model, x, nodes, inits, encoder=encoder)
    if encoder:
        inits.append(_constant("layers_1d", np.array([S], dtype=np.int64)))
        inits.append(_constant("hidden_1d", np.array([H], dtype=np.int64)))
        nodes += [
            helper.make_node("Gather", ["tokens_shape", "zero"], ["batch_size"], axis=0),
            helper.make_node("Unsqueeze", ["batch_size", "axis0"], ["batch_size_1d"]),
            helper.make_node(
                "Concat", ["layers_1d", "batch_size_1d", "hidden_1d"], ["zero_state_shape"], axis=0
            ),
            helper.make_node(
                "ConstantOfShape",
                ["zero_state_shape"],
                ["state_in"],
                value=helper.make_tensor("zero_float", TensorProto.FLOAT, [1], [0.0]),
            ),
        ]
        graph_inputs = [tokens, lengths]
        start_state = "state_in"
    else:
        state = helper.make_tensor_value_info("state", TensorProto.FLOAT, state_type)
        graph_inputs = [tokens, lengths, state]
        start_state = "state"
    if form == "native":
        nodes.append(helper.make_node("Cast", ["lengths"], ["seq_lens"], to=TensorProto.INT32))
        final = _native_stack(cells, nodes, inits, start_state, first_inputs)
    else:
        final = _scan_stack(
            cells, nodes, inits, start_state, first_inputs, rows=S, hidden=H, scratch=path.parent
        )
    state_name = "state" if encoder else "state_out"
    nodes.append(helper.make_node("Identity", [final], [state_name]))
    outputs = [helper.make_tensor_value_info(state_name, TensorProto.FLOAT, state_type)]
    if not encoder:
        inits += [
            _constant("last_layer", np.array(model.layers - 1, dtype=np.int64)),
            _constant("W_ya_T", model.output.weight.detach().cpu().numpy().T),
            _constant("b_y", model.output.bias.detach().cpu().numpy()),
        ]
        nodes += [
            helper.make_node("Gather", ["state_out", "last_layer"], ["top_state"], axis=0),
            helper.make_node("MatMul", ["top_state", "W_ya_T"], ["output_product"]),
            helper.make_node("Add", ["output_product", "b_y"], ["logits"]),
        ]
        logits_type: list[str | int] = [BATCH_AXIS, model.output_size]
        outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_type))
    graph = helper.make_graph(
        nodes, "encoder" if encoder else "sequence", graph_inputs, outputs, initializer=inits
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnserve-train"
    )
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))


def _first_layer_inputs(
    model: RNNLanguageModel,
    x: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    *,
    encoder: bool,
) -> str | None:
    """Nodes making what the first layer reads from the sequence input ``x``, [B, T, n]:
    the embedded tokens, or the input vectors; None for tokens the first layer gathers
    itself (its projection is a row of its input weight)."""
    if encoder or model.embedding is None:
        return None if x == "tokens" else x
    inits.append(_constant("embedding_rows", model.embedding.weight.detach().cpu().numpy()))
    nodes.append(helper.make_node("Gather", ["embedding_rows", x], ["embedded"], axis=0))
    return "embedded"


def _scan_stack(
    cells: nn.ModuleList,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    state: str,
    first_inputs: str | None,
    *,
    rows: int,
    hidden: int,
    scratch: Path,
) -> str:
    """Nodes running every layer over the input and ``lengths`` as one Scan of the
    traced step; returns the name of the final state [S, B, H]."""
    first = cast(Cell, cells[0])
    inits += [
        _constant("first_input_weight", first.input_weight.detach().cpu().numpy()),
        _constant("first_bias", first.bias.detach().cpu().numpy()),
    ]
    if first_inputs is None:  # the one-hot product: a row of the input weight
        nodes.append(
            helper.make_node("Gather", ["first_input_weight", "tokens"], ["gathered"], axis=0)
        )
    else:
        nodes.append(helper.make_node("MatMul", [first_inputs, "first_input_weight"], ["gathered"]))
    nodes += [
        helper.make_node("Add", ["gathered", "first_bias"], ["projected"]),
        helper.make_node("Gather", ["tokens_shape", "one"], ["steps"], axis=0),
        helper.make_node("Range", ["zero", "steps", "one"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["positions_row"]),
        helper.make_node("Unsqueeze", ["lengths", "axis1"], ["lengths_column"]),
        helper.make_node("Less", ["positions_row", "lengths_column"], ["valid"]),
        helper.make_node(
            "Scan",
            [state, "projected", "valid"],
            ["scan_state"],
            body=_scan_body(cells, rows, hidden, scratch),
            num_scan_inputs=2,
            scan_input_axes=[1, 1],
        ),
    ]
    return "scan_state"


# ------------------------------------------------------------------ native recurrent ops


@dataclass(frozen=True)
class NativeLayer:
    """One layer as an ONNX ``RNN`` or ``GRU`` operator: W [G*H, I], R [G*H, H] and
    B [2*G*H] (input biases, then recurrent ones) in the operator's gate order."""

    op_type: str
    attributes: dict[str, Any]
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray


# Γ_r = σ(100) is exactly 1.0 in float32: the gru-simple cell as a GRU whose reset gate
# is always open.
_OPEN_GATE_BIAS = 100.0


def native_layer(cell: Cell) -> NativeLayer:
    """The ONNX operator computing ``cell`` exactly (docs/MODELS.md):

    * ``rnn-tanh``/``rnn-relu``: ``RNN`` with activation Tanh/Relu;
    * ``gru``: ``GRU`` with ``linear_before_reset=0`` (the course form); its gate order is
      z, r, h and its z weights the *old* state, so ``z = 1 - Γ_u``: W_z = -W_u, b_z = -b_u;
    * ``gru-simple``: the same with the reset gate held open (zero weights, bias 100);
    * ``gru-torch``: ``GRU`` with ``linear_before_reset=1`` (PyTorch's form), b_hn as Rb_h;
    * ``lstm``: ``LSTM`` (PyTorch's equations), its gates reordered i, o, f, c.
    """
    H = cell.hidden_size
    weights = {k: v.astype(np.float32) for k, v in cell.seed_weights().items()}

    def split(gate: str) -> tuple[np.ndarray, np.ndarray]:  # (W_gx, W_ga)
        return weights[f"W_{gate}"][:, H:], weights[f"W_{gate}"][:, :H]

    zeros_x = np.zeros((H, cell.input_size), np.float32)
    zeros_h = np.zeros((H, H), np.float32)
    zero_b = np.zeros(H, np.float32)
    if isinstance(cell, RNNTanhCell):
        W_x, W_h = split("a")
        activation = "Relu" if isinstance(cell, RNNReluCell) else "Tanh"
        return NativeLayer(
            "RNN",
            {"activations": [activation]},
            W_x,
            W_h,
            np.concatenate([weights["b_a"], zero_b]),
        )
    if isinstance(cell, GRUCell):
        (u_x, u_h), (r_x, r_h), (c_x, c_h) = split("u"), split("r"), split("c")
        gates_x, gates_h = [-u_x, r_x, c_x], [-u_h, r_h, c_h]
        gate_b = [-weights["b_u"], weights["b_r"], weights["b_c"]]
        recurrent_b = [zero_b, zero_b, zero_b]
        before_reset = 0
    elif isinstance(cell, SimpleGRUCell):
        (u_x, u_h), (c_x, c_h) = split("u"), split("c")
        gates_x, gates_h = [-u_x, zeros_x, c_x], [-u_h, zeros_h, c_h]
        open_gate = np.full(H, _OPEN_GATE_BIAS, np.float32)
        gate_b = [-weights["b_u"], open_gate, weights["b_c"]]
        recurrent_b = [zero_b, zero_b, zero_b]
        before_reset = 0
    elif isinstance(cell, LSTMCell):
        # ONNX's LSTM stacks its gates i, o, f, c (c: the candidate, our g).
        order = ("i", "o", "f", "g")
        return NativeLayer(
            "LSTM",
            {},
            np.concatenate([split(g)[0] for g in order]),
            np.concatenate([split(g)[1] for g in order]),
            np.concatenate([weights[f"b_{g}"] for g in order] + [zero_b] * 4),
        )
    elif isinstance(cell, TorchGRUCell):
        (z_x, z_h), (r_x, r_h), (n_x, n_h) = split("z"), split("r"), split("n")
        gates_x, gates_h = [z_x, r_x, n_x], [z_h, r_h, n_h]
        gate_b = [weights["b_z"], weights["b_r"], weights["b_n"]]
        recurrent_b = [zero_b, zero_b, weights["b_hn"]]
        before_reset = 1
    else:
        raise GraphShapeError(f"no native ONNX operator for {type(cell).__name__}")
    return NativeLayer(
        "GRU",
        {"linear_before_reset": before_reset},
        np.concatenate(gates_x),
        np.concatenate(gates_h),
        np.concatenate(gate_b + recurrent_b),
    )


def _native_stack(
    cells: nn.ModuleList,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    state: str,
    first_inputs: str | None,
) -> str:
    """Nodes running every layer over the input and ``seq_lens`` from ``state`` [S, B, H];
    returns the name of the final state [S, B, H] (h of every layer, then an LSTM's c)."""
    stack = cast("list[Cell]", list(cells))
    H, L = stack[0].hidden_size, len(stack)
    finals: dict[str, list[str]] = {part: [] for part in stack[0].state_parts}
    layer_input = ""
    for layer, module in enumerate(stack):
        spec = native_layer(module)
        W = spec.W
        if layer == 0:
            if first_inputs is not None:  # embedded tokens or input vectors, [B, T, n]
                nodes.append(
                    helper.make_node("Transpose", [first_inputs], ["layer0_inputs"], perm=[1, 0, 2])
                )
            else:
                W = _one_hot_inputs(module, W, nodes, inits)
            layer_input = "layer0_inputs"
        prefix = f"layer{layer}_"
        inits += [
            _constant(prefix + "W", W[None]),
            _constant(prefix + "R", spec.R[None]),
            _constant(prefix + "B", spec.B[None]),
        ]
        initial = []
        for p, part in enumerate(module.state_parts):  # the rows of this layer's h (and c)
            row = p * L + layer
            inits += [
                _constant(f"{prefix}{part}_start", np.array([row], dtype=np.int64)),
                _constant(f"{prefix}{part}_end", np.array([row + 1], dtype=np.int64)),
            ]
            nodes.append(
                helper.make_node(
                    "Slice",
                    [state, f"{prefix}{part}_start", f"{prefix}{part}_end"],
                    [f"{prefix}initial_{part}"],
                )
            )
            initial.append(f"{prefix}initial_{part}")
        outputs = [f"{prefix}final_{part}" for part in module.state_parts]
        nodes += [
            helper.make_node(
                spec.op_type,
                [layer_input, prefix + "W", prefix + "R", prefix + "B", "seq_lens", *initial],
                [prefix + "Y", *outputs],
                hidden_size=H,
                **spec.attributes,
            ),
            helper.make_node("Squeeze", [prefix + "Y", "axis1"], [prefix + "outputs"]),
        ]
        layer_input = prefix + "outputs"
        for part, output in zip(module.state_parts, outputs, strict=True):
            finals[part].append(output)
    rows = [name for part in stack[0].state_parts for name in finals[part]]
    nodes.append(helper.make_node("Concat", rows, ["final_state"], axis=0))
    return "final_state"


def _one_hot_inputs(
    cell: Cell, weight: np.ndarray, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]
) -> np.ndarray:
    """Nodes making ``layer0_inputs`` [T, B, n] from ``tokens`` for a first layer that
    reads one-hot tokens; returns the W its operator multiplies them by."""
    vocab, width = cell.input_size, weight.shape[0]
    if vocab <= width:
        # The one-hot input itself: the product with W picks one column, exactly.
        inits.append(_constant("vocabulary_depth", np.array(vocab, dtype=np.int64)))
        inits.append(_constant("one_hot_values", np.array([0.0, 1.0], np.float32)))
        nodes.append(
            helper.make_node(
                "OneHot",
                ["tokens", "vocabulary_depth", "one_hot_values"],
                ["token_inputs"],
                axis=-1,
            )
        )
    else:
        # A vocabulary wider than the gates: gather each token's column of W (the
        # embedding lookup) and let the operator multiply by the identity.
        inits.append(_constant("input_columns", np.ascontiguousarray(weight.T)))
        nodes.append(helper.make_node("Gather", ["input_columns", "tokens"], ["token_inputs"]))
        weight = np.eye(width, dtype=np.float32)
    nodes.append(helper.make_node("Transpose", ["token_inputs"], ["layer0_inputs"], perm=[1, 0, 2]))
    return weight


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
