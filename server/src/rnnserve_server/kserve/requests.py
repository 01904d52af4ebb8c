"""A ModelInferRequest read and checked for one model (``read``), and its answer built
from the step's output (``answer``).

Everything a request carries is checked here, before any sequence is started, ended or
stepped, so that a bad request changes nothing: INVALID_ARGUMENT naming the tensor or
parameter, in Triton's words where Triton has them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rnnserve_server.errors import InvalidArgument, out_of_range, over_limit, shown
from rnnserve_server.inputs import NO_INPUT, InputLimits, TokenInput, encode_input
from rnnserve_server.kserve import tensors
from rnnserve_server.kserve.models import (
    CONDITION,
    INPUT_IDS,
    LOGITS,
    PROBABILITIES,
    SOURCE_IDS,
    SOURCE_TEXT,
    STEPS,
    TEXT,
    TOP_K_IDS,
    TOP_K_PROBABILITIES,
    TOP_K_TEXTS,
    TensorSpec,
    inputs,
    outputs,
)
from rnnserve_server.kserve.pb import grpc_service_pb2 as pb
from rnnserve_server.kserve.sequences import SequenceId
from rnnserve_server.outputs import names
from rnnserve_server.repository import Model
from rnnserve_server.sampling import MAX_TOP_K
from rnnserve_server.stepresults import StepOutput

DEFAULT_TOP_K = 5
CLASSIFIABLE = (LOGITS, PROBABILITIES)
TOP_K_OUTPUTS = (TOP_K_IDS, TOP_K_PROBABILITIES, TOP_K_TEXTS)


@dataclass(frozen=True)
class Requested:
    """An output the request asks for; ``classes`` > 0: Triton's classification
    extension, the top ``classes`` entries as "value:index:label" strings."""

    name: str
    classes: int = 0


@dataclass(frozen=True)
class InferCall:
    sequence: SequenceId
    start: bool
    end: bool
    tokens: TokenInput  # the ids to feed, checked
    source: TokenInput  # on a start: what an encoder model's first state is made from
    condition: str  # on a start: a conditional model's condition
    outputs: tuple[Requested, ...]
    top_k: int

    @property
    def k(self) -> int:
        """How many of the most probable outputs the step must select."""
        wanted = [self.top_k] if any(r.name in TOP_K_OUTPUTS for r in self.outputs) else []
        return max([*wanted, *(r.classes for r in self.outputs)], default=0)

    @property
    def full(self) -> bool:
        return any(r.name == PROBABILITIES and not r.classes for r in self.outputs)

    @property
    def with_logits(self) -> bool:
        return any(r.name == LOGITS for r in self.outputs)


def _parameter(parameters: Mapping[str, pb.InferParameter], name: str) -> tuple[str, Any] | None:
    """(which kind, value) of a parameter, or None where it is absent."""
    if name not in parameters:
        return None
    value = parameters[name]
    which = value.WhichOneof("parameter_choice")
    return (which, getattr(value, which)) if which else None


def _sequence(model: Model, parameters: Mapping[str, pb.InferParameter]) -> SequenceId:
    kind, value = _parameter(parameters, "sequence_id") or ("uint64_param", 0)
    if kind not in ("uint64_param", "int64_param", "string_param"):
        raise InvalidArgument(f"parameter sequence_id must be a uint64 or a string, not {kind}")
    if kind == "int64_param" and value < 0:
        raise out_of_range("parameter sequence_id", value, "1 .. 2**64-1, or a string")
    if value in (0, ""):
        raise InvalidArgument(
            f"inference request to model '{model.name}' must specify a non-zero or "
            "non-empty correlation ID (the parameter sequence_id)"
        )
    return SequenceId(value)


def _flag(parameters: Mapping[str, pb.InferParameter], name: str) -> bool:
    found = _parameter(parameters, name)
    if found is None:
        return False
    kind, value = found
    if kind != "bool_param":
        raise InvalidArgument(f"parameter {name} must be a bool, not {kind}")
    return bool(value)


def _top_k(parameters: Mapping[str, pb.InferParameter]) -> int:
    found = _parameter(parameters, "top_k")
    if found is None:
        return DEFAULT_TOP_K
    kind, value = found
    if kind not in ("int64_param", "uint64_param") or not 0 <= value <= MAX_TOP_K:
        raise out_of_range("parameter top_k", value, f"an integer 0 .. {MAX_TOP_K}")
    return int(value)


def _requested(model: Model, request: pb.ModelInferRequest) -> tuple[Requested, ...]:
    known = {s.name for s in outputs(model)}
    if not request.outputs:
        return tuple(Requested(s.name) for s in outputs(model))
    chosen: list[Requested] = []
    for output in request.outputs:
        if output.name not in known:
            raise InvalidArgument(
                f"unexpected inference output '{output.name}' for model '{model.name}'; "
                f"it has {sorted(known)}"
            )
        if any(r.name == output.name for r in chosen):
            raise InvalidArgument(f"inference output '{output.name}' is requested twice")
        classes = 0
        found = _parameter(output.parameters, "classification")
        if found is not None:
            kind, classes = found
            if output.name not in CLASSIFIABLE:
                raise InvalidArgument(
                    f"classification is offered on the outputs {list(CLASSIFIABLE)}, "
                    f"not on '{output.name}'"
                )
            if kind not in ("int64_param", "uint64_param") or not 0 < classes <= MAX_TOP_K:
                raise out_of_range(
                    f"classification of output '{output.name}'", classes, f"1 .. {MAX_TOP_K}"
                )
        chosen.append(Requested(output.name, int(classes)))
    return tuple(chosen)


def _inputs(model: Model, request: pb.ModelInferRequest, token_limit: int) -> dict[str, Any]:
    """Each input tensor's value (ids or text), its datatype and shape checked, and an
    INT64 tensor's element count against ``token_limit`` before its elements are read."""
    specs = {s.name: s for s in inputs(model)}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"expected {len(request.inputs)} raw_input_contents (one per input), got {len(raw)}"
        )
    values: dict[str, Any] = {}
    for index, tensor in enumerate(request.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{tensor.name}' for model '{model.name}'; "
                f"it takes {sorted(specs)}"
            )
        if tensor.name in values:
            raise InvalidArgument(f"inference input '{tensor.name}' is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is {shown(tensor.datatype)}, but "
                f"model '{model.name}' expects '{spec.datatype}'"
            )
        _check_shape(model, spec, list(tensor.shape))
        if spec.datatype == "INT64":
            count = tensors.element_count(tensor.name, tensor.shape)
            if count > token_limit:
                raise over_limit(
                    f"inference input '{tensor.name}' tokens",
                    count,
                    token_limit,
                    "max_tokens_per_request",
                )
        data = raw[index] if raw else None
        if data is not None and tensor.HasField("contents"):
            raise InvalidArgument(
                f"inference input '{tensor.name}': contents must not be given when "
                "raw_input_contents are"
            )
        read: Callable[..., Any] = tensors.int64s if spec.datatype == "INT64" else tensors.text
        values[tensor.name] = read(tensor, data)
    return values


def _check_shape(model: Model, spec: TensorSpec, shape: list[int]) -> None:
    fits = len(shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise InvalidArgument(
            f"unexpected shape for input '{spec.name}' for model '{model.name}'. "
            f"Expected {list(spec.shape)}, got {shape}"
        )


def _one_of(values: dict[str, Any], ids_name: str, text_name: str) -> TokenInput:
    if ids_name in values:
        return TokenInput(ids=values[ids_name])
    if text_name in values:
        return TokenInput(text=values[text_name])
    return NO_INPUT


def read(model: Model, request: pb.ModelInferRequest, *, limits: InputLimits) -> InferCall:
    """The request, checked against the model and the server's ``limits`` (token ids in
    range, their count and a text's length checked before they are read or tokenized)."""
    parameters = request.parameters
    sequence = _sequence(model, parameters)
    start = _flag(parameters, "sequence_start")
    values = _inputs(model, request, limits.tokens)
    if (INPUT_IDS in values) == (TEXT in values):
        raise InvalidArgument(
            f"model '{model.name}' takes exactly one of the inputs '{INPUT_IDS}' (token ids) "
            f"and '{TEXT}' (text) per request; got {sorted(values) or 'none'}"
        )
    if SOURCE_IDS in values and SOURCE_TEXT in values:
        raise InvalidArgument(f"give one of '{SOURCE_IDS}' and '{SOURCE_TEXT}', not both")
    starting = {SOURCE_IDS, SOURCE_TEXT, CONDITION} & values.keys()
    if starting and not start:
        raise InvalidArgument(
            f"inference input '{min(starting)}' makes a sequence's first state: it is read "
            "only on the request that starts the sequence (sequence_start)"
        )
    kind = model.package.manifest.initial_state.kind
    if start and kind == "encoder" and not starting:
        raise InvalidArgument(
            f"model '{model.name}' starts each sequence from a source: give '{SOURCE_TEXT}' "
            f"or '{SOURCE_IDS}' on the request with sequence_start"
        )
    if start and kind == "condition" and not starting:
        raise InvalidArgument(
            f"model '{model.name}' starts each sequence from a condition: give '{CONDITION}' "
            f"(one of {list(model.package.manifest.conditions)}) on the request with "
            "sequence_start"
        )
    given = _one_of(values, INPUT_IDS, TEXT)
    field = INPUT_IDS if given.ids is not None else TEXT
    ids = encode_input(model, given, field=field, limits=limits)
    return InferCall(
        sequence=sequence,
        start=start,
        end=_flag(parameters, "sequence_end"),
        tokens=TokenInput(ids=ids.tolist()),
        source=_one_of(values, SOURCE_IDS, SOURCE_TEXT),
        condition=values.get(CONDITION, ""),
        outputs=_requested(model, request),
        top_k=_top_k(parameters),
    )


def answer(
    model: Model, request: pb.ModelInferRequest, call: InferCall, out: StepOutput
) -> pb.ModelInferResponse:
    """The response: the requested outputs, raw, in the order they were asked for."""
    labels = names(model)
    top_ids, top_probabilities = out.top.ids, out.top.probabilities
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request.id
    )
    for requested in call.outputs:
        name = requested.name
        if requested.classes:
            ids = top_ids[: requested.classes]
            if name == PROBABILITIES:
                scores = top_probabilities[: requested.classes]
            else:
                assert out.logits is not None  # asked for: call.with_logits
                scores = out.logits[ids].tolist()
            tensor, raw = tensors.output(
                name,
                "BYTES",
                [_classified(v, i, labels[i]) for v, i in zip(scores, ids, strict=True)],
            )
        elif name == LOGITS:
            tensor, raw = tensors.output(name, "FP32", out.logits)
        elif name == PROBABILITIES:
            tensor, raw = tensors.output(name, "FP32", out.distribution)
        elif name == TOP_K_IDS:
            tensor, raw = tensors.output(name, "INT64", top_ids[: call.top_k])
        elif name == TOP_K_PROBABILITIES:
            tensor, raw = tensors.output(name, "FP32", top_probabilities[: call.top_k])
        elif name == TOP_K_TEXTS:
            tensor, raw = tensors.output(name, "BYTES", [labels[i] for i in top_ids[: call.top_k]])
        else:
            assert name == STEPS
            tensor, raw = tensors.output(name, "INT64", [out.steps])
        response.outputs.append(tensor)
        response.raw_output_contents.append(raw)
    return response


def _classified(value: float, index: int, label: str) -> str:
    """Triton's classification entry: the value with 9 decimals, the index, the label."""
    return f"{value:.9f}:{index}:{label}" if label else f"{value:.9f}:{index}"
