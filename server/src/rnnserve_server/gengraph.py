"""The generation graph: K steps of a package's step graph with sampling between them,
built from the step graph itself (``onnx``), so that onnxruntime, not Python, runs the
token-by-token loop of a Generate.

One run feeds each row its next token, samples the token after it, feeds that, and so
on K times: ``(tokens [B], state [L,B,H], uniforms [B,K] f64, temperature [B] f64)`` ->
``(sampled [B,K], probabilities [B,K] f64, states [K,L,B,H], totals [B,K] f64)``;
``states[s]`` is the state after the s-th token fed (``tokens`` first, then
``sampled[:, s-1]``), ``totals`` the weights' sum behind each draw (not finite where the
output was not). The K copies of the step graph share its initializers by name, so the
weights are stored once.

Sampling is ``sampling.SamplingParams.sample`` (and ``sample_rows``) op for op, in
float64: ``Generator.choice(n, p=w)`` is one ``random()`` draw u per token, the index
``searchsorted(cumsum(w) / sum, u, side="right")``, so the uniforms are drawn beforehand
from each session's own generator and the tokens are the reference's for the same seed.
Temperature 0 is the argmax of the logits and draws nothing. Two variants, because the
reference orders the candidates two ways: ``plain`` (temperature sampling over the whole
output in id order) and ``ranked`` (top-k and top-p: candidates by descending
probability, ties lower id first, which is onnx TopK's rule), the latter with per-row
``top_k`` [B] (0: all), ``top_p`` [B] and ``rank`` [1] (the widest top_k of the run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PLAIN, RANKED = "plain", "ranked"
# CumSum (opset 11) is the oldest operator the sampling needs.
MIN_OPSET = 11


class Unsupported(ValueError):
    """A step graph this module cannot unroll (the reason says why)."""


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise Unsupported("the step graph imports no default-domain opset")


class _Builder:
    """Nodes and constants of the graph being built, named uniquely."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"gen/{hint}_{self._count}"

    def const(self, value: Any, dtype: Any) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Append a node; its output name (or names, with ``outputs`` > 1)."""
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def reduce(self, op_type: str, x: str) -> str:
        """Over the last axis, keeping it; axes became an input in opset 13 (ReduceSum)
        and 18 (the others)."""
        since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= since:
            return str(self.op(op_type, x, self.const([-1], np.int64), keepdims=1))
        return str(self.op(op_type, x, axes=[-1], keepdims=1))

    def last_column(self, x: str) -> str:
        """x[:, -1:] of a [B, N] tensor."""
        return str(
            self.op(
                "Slice",
                x,
                self.const([-1], np.int64),
                self.const([np.iinfo(np.int64).max], np.int64),
                self.const([1], np.int64),
            )
        )

    def column(self, x: str, index: int) -> str:
        """x[:, index:index+1] of a [B, N] tensor."""
        return str(
            self.op(
                "Slice",
                x,
                self.const([index], np.int64),
                self.const([index + 1], np.int64),
                self.const([1], np.int64),
            )
        )


def _renamed_graph(graph: onnx.GraphProto, rename: Callable[[str], str]) -> onnx.GraphProto:
    """A copy of a subgraph (an If or Loop body) with every name passed through rename."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    for node in copy.node:
        _rename_node(node, rename)
    for value in (*copy.input, *copy.output, *copy.value_info):
        value.name = rename(value.name)
    for tensor in copy.initializer:
        tensor.name = rename(tensor.name)
    return copy


def _rename_node(node: onnx.NodeProto, rename: Callable[[str], str]) -> None:
    node.input[:] = [rename(n) for n in node.input]
    node.output[:] = [rename(n) for n in node.output]
    if node.name:
        node.name = rename(node.name)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            attr.g.CopyFrom(_renamed_graph(attr.g, rename))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs = [_renamed_graph(g, rename) for g in attr.graphs]
            del attr.graphs[:]
            attr.graphs.extend(graphs)


def _copy_step(
    step: onnx.GraphProto, shared: set[str], index: int, tokens: str, state: str
) -> tuple[list[onnx.NodeProto], str, str]:
    """The step graph's nodes for step ``index``, fed ``tokens`` and ``state``: the
    nodes and the names of its logits and state_out."""
    prefix = f"step{index}/"
    inputs = {"tokens": tokens, "state": state}

    def rename(name: str) -> str:
        if not name or name in shared:
            return name
        return inputs.get(name, prefix + name)

    nodes = []
    for node in step.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        _rename_node(copy, rename)
        nodes.append(copy)
    return nodes, rename("logits"), rename("state_out")


@dataclass(frozen=True)
class _RowParameters:
    """Per-row values every step of a chunk uses, computed once per run."""

    greedy: str  # bool [B, 1]
    temperature: str  # f64 [B, 1], 1 where greedy
    positions: str = ""  # ranked: int64 [1, R], 0 .. R-1
    top_k: str = ""  # ranked: int64 [B, 1], the row's top_k (R where 0)
    nucleus: str = ""  # ranked: bool [B, 1], top_p < 1
    top_p: str = ""  # ranked: f64 [B, 1]


def _sample(
    b: _Builder, logits: str, uniform: str, row: _RowParameters, ranked: bool
) -> tuple[str, str, str]:
    """One step's draw from logits [B, V] with uniforms [B, 1]: token [B, 1] int64,
    its probability [B, 1] and the weights' total [B, 1]."""
    x = b.op("Cast", logits, to=TensorProto.DOUBLE)
    y = b.op("Div", x, row.temperature)
    e = b.op("Exp", b.op("Sub", y, b.reduce("ReduceMax", y)))
    p = b.op("Div", e, b.reduce("ReduceSum", e))  # softmax(logits / temperature)
    zero = b.const(0.0, np.float64)
    if ranked:
        values, order = b.op("TopK", p, "rank", outputs=2, axis=-1, largest=1, sorted=1)
        in_top_k = b.op("Less", row.positions, row.top_k)
        kept = b.op("Where", in_top_k, values, zero)
        cumulative = b.op("CumSum", kept, b.const(1, np.int64))
        bound = b.op("Mul", row.top_p, b.last_column(cumulative))
        below = b.op("Cast", b.op("Less", cumulative, bound), to=TensorProto.INT64)
        keep = b.op("Add", b.reduce("ReduceSum", below), b.const([[1]], np.int64))
        keep = b.op("Where", row.nucleus, keep, row.top_k)
        candidates = b.op("Where", b.op("Less", row.positions, keep), values, zero)
        w = b.op("Div", candidates, b.reduce("ReduceSum", candidates))  # renormalised
    else:
        w = b.op("Div", p, b.reduce("ReduceSum", p))  # the weights, renormalised as sample does
    cdf = b.op("CumSum", w, b.const(1, np.int64))
    total = b.last_column(cdf)
    cdf = b.op("Div", cdf, total)
    index = b.reduce(
        "ReduceSum", b.op("Cast", b.op("LessOrEqual", cdf, uniform), to=TensorProto.INT64)
    )
    token = b.op("GatherElements", order, index, axis=1) if ranked else index
    probability = b.op("GatherElements", w, index, axis=1)
    argmax = b.op("ArgMax", logits, axis=-1, keepdims=1)
    greedy_probability = b.op("GatherElements", p, argmax, axis=1)
    token = b.op("Where", row.greedy, argmax, token)
    probability = b.op("Where", row.greedy, greedy_probability, probability)
    return token, probability, total


def chunk_model(step: onnx.ModelProto, steps: int, variant: str) -> onnx.ModelProto:
    """The generation graph of ``steps`` steps (see the module's docstring)."""
    if steps < 1:
        raise ValueError(f"steps = {steps}: at least 1")
    opset = _default_opset(step)
    if opset < MIN_OPSET:
        raise Unsupported(f"the step graph uses opset {opset}; generation needs {MIN_OPSET}+")
    graph = step.graph
    names = ({v.name for v in graph.input}, {v.name for v in graph.output})
    if not ({"tokens", "state"} <= names[0] and {"logits", "state_out"} <= names[1]):
        raise Unsupported("the step graph lacks tokens/state -> logits/state_out")
    shared = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    ranked = variant == RANKED
    b = _Builder(opset)
    column = (-1, 1)
    greedy = b.op("Reshape", b.op("Equal", "temperature", b.const(0.0, np.float64)),
                  b.const(column, np.int64))  # fmt: skip
    temperature = b.op(
        "Reshape",
        b.op("Where", greedy, b.const(1.0, np.float64), b.op("Reshape", "temperature",
             b.const(column, np.int64))),
        b.const(column, np.int64),
    )  # fmt: skip
    row = _RowParameters(greedy, temperature)
    extra_inputs = []
    if ranked:
        positions = b.op(
            "Reshape",
            b.op("Range", b.const(0, np.int64), b.op("Reshape", "rank", b.const([], np.int64)),
                 b.const(1, np.int64)),
            b.const((1, -1), np.int64),
        )  # fmt: skip
        asked = b.op("Reshape", "top_k", b.const(column, np.int64))
        top_k = b.op("Where", b.op("Equal", asked, b.const(0, np.int64)), "rank", asked)
        top_p = b.op("Reshape", "top_p", b.const(column, np.int64))
        nucleus = b.op("Less", top_p, b.const(1.0, np.float64))
        row = _RowParameters(greedy, temperature, positions, top_k, nucleus, top_p)
        extra_inputs = [
            helper.make_tensor_value_info("top_k", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("top_p", TensorProto.DOUBLE, ["batch"]),
            helper.make_tensor_value_info("rank", TensorProto.INT64, [1]),
        ]
    nodes: list[onnx.NodeProto] = []
    tokens, state = "tokens", "state"
    sampled, probabilities, states, totals = [], [], [], []
    for s in range(steps):
        copied, logits, state = _copy_step(graph, shared, s, tokens, state)
        nodes += copied
        uniform = b.column("uniforms", s)
        token, probability, total = _sample(b, logits, uniform, row, ranked)
        sampled.append(token)
        probabilities.append(probability)
        totals.append(total)
        states.append(state)
        if s + 1 < steps:
            tokens = b.op("Reshape", token, b.const([-1], np.int64))
    outputs = {
        "sampled": b.op("Concat", *sampled, axis=1),
        "probabilities": b.op("Concat", *probabilities, axis=1),
        "totals": b.op("Concat", *totals, axis=1),
    }
    stacked = b.op("Concat", *states, axis=0)  # [K*L, B, H]
    layers_shape = b.op("Shape", "state")  # [L, B, H]
    outputs["states"] = b.op(
        "Reshape", stacked, b.op("Concat", b.const([steps], np.int64), layers_shape, axis=0)
    )
    for name, produced in outputs.items():
        b.nodes.append(helper.make_node("Identity", [produced], [name], name=f"gen/{name}"))
    state_info = next(v for v in graph.input if v.name == "state")
    layers, _, hidden = (d.dim_value or d.dim_param for d in state_info.type.tensor_type.shape.dim)
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [layers, "batch", hidden]),
        helper.make_tensor_value_info("uniforms", TensorProto.DOUBLE, ["batch", steps]),
        helper.make_tensor_value_info("temperature", TensorProto.DOUBLE, ["batch"]),
        *extra_inputs,
    ]
    result_outputs = [
        helper.make_tensor_value_info("sampled", TensorProto.INT64, ["batch", steps]),
        helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, ["batch", steps]),
        helper.make_tensor_value_info(
            "states", TensorProto.FLOAT, [steps, layers, "batch", hidden]
        ),
        helper.make_tensor_value_info("totals", TensorProto.DOUBLE, ["batch", steps]),
    ]
    combined = helper.make_graph(
        nodes + b.nodes,
        f"{graph.name or 'step'}-generate-{steps}-{variant}",
        inputs,
        result_outputs,
        initializer=[*graph.initializer, *b.initializers],
        sparse_initializer=list(graph.sparse_initializer),
    )
    model = helper.make_model(combined, opset_imports=list(step.opset_import))
    model.ir_version = step.ir_version
    return model


@dataclass(frozen=True)
class ChunkResult:
    """One run's outputs (see the module's docstring)."""

    sampled: np.ndarray[Any, np.dtype[np.int64]]
    probabilities: np.ndarray[Any, np.dtype[np.float64]]
    states: np.ndarray[Any, np.dtype[np.float32]]
    totals: np.ndarray[Any, np.dtype[np.float64]]


OUTPUTS = ("sampled", "probabilities", "states", "totals")
Session = Any  # an onnxruntime.InferenceSession (made by the runtime's provider choice)


class GenerationGraph:
    """Both variants of a package's generation graph as onnxruntime sessions, checked
    against the step graph and the reference sampler when built."""

    def __init__(self, steps: int, sessions: dict[str, Session], vocabulary: int) -> None:
        self.steps = steps
        self.vocabulary = vocabulary
        self._sessions = sessions

    @classmethod
    def build(
        cls, step_path: str, steps: int, vocabulary: int, session: Callable[[bytes], Session]
    ) -> GenerationGraph:
        """Unroll the step graph at ``step_path``; ``session`` makes an onnxruntime
        session from a serialized model. Unsupported if the graph cannot be unrolled."""
        step = onnx.load(step_path)
        sessions = {
            variant: session(chunk_model(step, steps, variant).SerializeToString())
            for variant in (PLAIN, RANKED)
        }
        return cls(steps, sessions, vocabulary)

    def run(
        self,
        tokens: np.ndarray[Any, Any],
        state: np.ndarray[Any, Any],
        uniforms: np.ndarray[Any, Any],
        temperature: np.ndarray[Any, Any],
        *,
        top_k: np.ndarray[Any, Any] | None = None,
        top_p: np.ndarray[Any, Any] | None = None,
    ) -> ChunkResult:
        """One chunk for every row; ``top_k``/``top_p`` (both or neither) pick the
        ranked variant."""
        feeds = {"tokens": tokens, "state": state, "uniforms": uniforms, "temperature": temperature}
        variant = PLAIN
        if top_k is not None and top_p is not None:
            variant = RANKED
            widest = int(np.where(top_k == 0, self.vocabulary, top_k).max())
            feeds.update(top_k=top_k, top_p=top_p, rank=np.array([widest], dtype=np.int64))
        sampled, probabilities, states, totals = self._sessions[variant].run(OUTPUTS, feeds)
        return ChunkResult(sampled, probabilities, states, totals)


StepFunction = Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any]], tuple[Any, Any]]
# The rows the check samples: (temperature, top_k, top_p), both variants, greedy included.
CHECKED_PLAIN = ((1.0, 0, 1.0), (0.7, 0, 1.0), (0.0, 0, 1.0), (2.5, 0, 1.0))
CHECKED_RANKED = ((1.0, 3, 1.0), (1.0, 0, 0.9), (0.0, 5, 1.0), (0.8, 10, 0.7))


def verify(graph: GenerationGraph, step: StepFunction, layers: int, hidden: int) -> None:
    """Unsupported unless a chunk from a random state gives the tokens of the step graph
    fed token by token and sampled by ``SamplingParams.sample`` with the same
    generators, its probabilities to float64 rounding and its states to float32's."""
    from rnnserve_server.sampling import SamplingParams

    source = np.random.default_rng(20261206)
    for rows in (CHECKED_PLAIN, CHECKED_RANKED):
        size = len(rows)
        params = [
            SamplingParams.checked(temperature=t, top_k=min(k, graph.vocabulary), top_p=p,
                                   vocabulary=graph.vocabulary)
            for t, k, p in rows
        ]  # fmt: skip
        state = (source.normal(size=(layers, size, hidden)) * 0.5).astype(np.float32)
        tokens = source.integers(0, graph.vocabulary, size=size)
        seeds = source.integers(1 << 62, size=size).tolist()
        drawing = [np.random.default_rng(s) for s in seeds]
        uniforms = np.stack(
            [g.random(graph.steps) if p.temperature else np.zeros(graph.steps)
             for g, p in zip(drawing, params, strict=True)]
        )  # fmt: skip
        ranked = rows is CHECKED_RANKED
        got = graph.run(
            tokens,
            state,
            uniforms,
            np.array([p.temperature for p in params]),
            top_k=np.array([p.top_k for p in params]) if ranked else None,
            top_p=np.array([p.top_p for p in params]) if ranked else None,
        )
        reference = [np.random.default_rng(s) for s in seeds]
        for s in range(graph.steps):
            logits, state = step(tokens, state)
            drawn = [p.sample(row, g) for row, p, g in zip(logits, params, reference, strict=True)]
            tokens = np.array([token for token, _ in drawn], dtype=np.int64)
            if not (tokens == got.sampled[:, s]).all():
                raise Unsupported(
                    f"step {s}: the generation graph sampled {got.sampled[:, s].tolist()}, "
                    f"the step graph and the reference sampler {tokens.tolist()}"
                )
            expected = np.array([probability for _, probability in drawn])
            if not np.allclose(got.probabilities[:, s], expected, rtol=1e-9, atol=0):
                raise Unsupported(f"step {s}: probabilities differ from the reference")
            if not np.allclose(got.states[s], state, rtol=0, atol=1e-5):
                raise Unsupported(f"step {s}: states differ from the step graph's")
