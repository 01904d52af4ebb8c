"""rnnserve.v1 messages to and from the engine's types: model descriptions, inputs,
step and generation answers, StepMany columns, vocabularies."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve_server.errors import ServiceError, out_of_range
from rnnserve_server.generating import GenerateOptions
from rnnserve_server.generation import GeneratedToken, GenerateEvent
from rnnserve_server.inputs import DEFAULT_TOP_K, TokenInput, VectorInput
from rnnserve_server.repository import Model, ReloadResult
from rnnserve_server.rpc import bounded_details
from rnnserve_server.stepresults import StepColumns, StepManyAnswer, StepOutput
from rnnserve_server.trainingmarks import TrainingMark

SHAPES = {
    "one-to-one": pb.TASK_SHAPE_ONE_TO_ONE,
    "one-to-many": pb.TASK_SHAPE_ONE_TO_MANY,
    "many-to-one": pb.TASK_SHAPE_MANY_TO_ONE,
    "many-to-many": pb.TASK_SHAPE_MANY_TO_MANY,
    "seq2seq": pb.TASK_SHAPE_SEQ2SEQ,
}
OUTPUTS = {
    "vocabulary": pb.OUTPUT_KIND_VOCABULARY,
    "labels": pb.OUTPUT_KIND_LABELS,
    "sigmoid": pb.OUTPUT_KIND_SIGMOID,
    "regression": pb.OUTPUT_KIND_REGRESSION,
}
# The top entries one StepMany answer may carry (steps x top_k): building them costs the
# event loop about 0.25 us each (4096 steps x the default 5: 3 ms).
MAX_TOP_PER_MESSAGE = 32_768
INPUTS = {"tokens": pb.INPUT_KIND_TOKENS, "vectors": pb.INPUT_KIND_VECTORS}
DEFAULT_VOCABULARY_PAGE = 10_000
MAX_VOCABULARY_PAGE = 100_000
FINISH = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "length": pb.FINISH_REASON_LENGTH,
    "end_token": pb.FINISH_REASON_END_TOKEN,
    "stop_string": pb.FINISH_REASON_STOP_STRING,
    "stop_token": pb.FINISH_REASON_STOP_TOKEN,
}


def refused_packages(result: ReloadResult) -> list[pb.RefusedPackage]:
    """The packages (and config.toml files) a rescan refused, and why."""
    return [pb.RefusedPackage(path=str(p), reason=r) for p, r in result.refused.items()]


def model_info(model: Model) -> pb.ModelInfo:
    manifest = model.package.manifest
    tokenizer = model.package.tokenizer
    rows, width = manifest.state_shape
    return pb.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        shape=SHAPES[manifest.shape],
        cell=manifest.cell,
        layers=manifest.layers,
        hidden_size=manifest.hidden_size,
        vocabulary=None
        if tokenizer is None
        else pb.Vocabulary(
            kind=tokenizer.kind, size=tokenizer.size, special_tokens=tokenizer.special_tokens
        ),
        output=OUTPUTS[manifest.output.kind],
        labels=list(manifest.output.labels),
        description=manifest.description,
        state_bytes=rows * width * 4,
        metrics=manifest.metrics,
        initial_state=manifest.initial_state.kind,
        conditions=list(manifest.conditions),
        input=INPUTS[manifest.input.kind],
        input_size=manifest.input.size,
        values=manifest.output.values,
        state_parts=[
            pb.StatePart(name=part.name, rows=part.rows, bound=part.bound)
            for part in manifest.state_layout.parts
        ],
        state_width=width,
        output_before_input=model.runtime.has("head"),
    )


def vocabulary_page(model: Model, start: int, limit: int) -> pb.GetVocabularyResponse:
    """One page of a model's vocabulary (GetVocabulary), with its tokenizer's rules."""
    tokenizer = model.package.vocabulary  # FAILED_PRECONDITION for a vectors model
    if not 0 <= limit <= MAX_VOCABULARY_PAGE:
        raise out_of_range(
            "limit", limit, f"0 (the default, {DEFAULT_VOCABULARY_PAGE}) .. {MAX_VOCABULARY_PAGE}"
        )
    if not 0 <= start <= tokenizer.size:
        raise out_of_range("start", start, f"0 .. {tokenizer.size} (the vocabulary's size)")
    end = min(tokenizer.size, start + (limit or DEFAULT_VOCABULARY_PAGE))
    rules = tokenizer.rules()
    return pb.GetVocabularyResponse(
        model=model.name,
        version=model.version,
        size=tokenizer.size,
        start=start,
        tokens=tokenizer.tokens[start:end],
        next_start=end,
        special_tokens=tokenizer.special_tokens,
        tokenizer=pb.TokenizerRules(
            kind=rules.kind,
            normalization=rules.normalization,
            lowercase=rules.lowercase,
            word_pattern=rules.word_pattern,
            offsets=rules.offsets,
            separator=rules.separator,
            unknown_text=rules.unknown_text,
            attached=rules.attached,
            attached_categories=rules.attached_categories,
        ),
    )


def training_model(mark: TrainingMark) -> pb.TrainingModel:
    return pb.TrainingModel(
        name=mark.name,
        phase=mark.phase,
        step=mark.step,
        steps=mark.steps,
        seconds=max(0.0, time.time() - mark.started),
    )


def token_input(request: Any, ids_field: str, text_field: str, oneof: str) -> TokenInput:
    """The request's input; its ids stay the message's own container (not copied into a
    list) until their count has been checked against the server's limit."""
    which = request.WhichOneof(oneof)
    if which == ids_field:
        return TokenInput(ids=getattr(request, ids_field).ids)
    if which == text_field:
        return TokenInput(text=getattr(request, text_field))
    if which == "vectors":
        vectors = request.vectors
        return TokenInput(vectors=VectorInput(vectors.values, vectors.steps))
    return TokenInput()


def step_response(session_id: str, out: StepOutput) -> pb.StepResponse:
    response = pb.StepResponse()
    _fillstep_response(response, session_id, out)
    return response


def _fillstep_response(response: pb.StepResponse, session_id: str, out: StepOutput) -> None:
    # Field by field: repeated fields filled with add()/extend() cost half of constructing
    # sub-messages and passing them in (this runs for every step).
    response.session_id = session_id
    response.steps = out.steps
    response.consumed = out.consumed
    add = response.top.add
    names = out.top.names
    for i, p in zip(out.top.ids, out.top.probabilities, strict=True):
        add(id=i, text=names[i], probability=p)
    if out.distribution:
        response.distribution.extend(out.distribution)
    if out.values:
        response.values.extend(out.values)


def generated_tokens(model: Model, tokens: list[GeneratedToken]) -> list[pb.GeneratedToken]:
    """GeneratedToken messages: ``text`` the token as the vocabulary writes it,
    ``piece`` what it adds to the output (the engine's ``text``)."""
    written = model.package.vocabulary.tokens
    return [
        pb.GeneratedToken(id=t.id, text=written[t.id], piece=t.text, probability=t.probability)
        for t in tokens
    ]


def generate_response(
    model: Model, session_id: str, events: list[GenerateEvent]
) -> pb.GenerateResponse:
    """One response message for one or more consecutive events (the last one's status)."""
    last = events[-1]
    response = pb.GenerateResponse(
        session_id=session_id,
        steps=last.steps,
        finish_reason=FINISH[last.finish_reason],
        matched_stop=last.matched_stop,
    )
    response.tokens.extend(
        generated_tokens(model, [e.token for e in events if e.token is not None])
    )
    return response


def generate_options(request: Any) -> GenerateOptions:
    return GenerateOptions(
        max_tokens=request.max_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_k=request.top_k,
        top_p=request.top_p if request.HasField("top_p") else None,
        seed=request.seed if request.HasField("seed") else None,
        stop=list(getattr(request, "stop", ())),
        stop_token_ids=list(getattr(request, "stop_token_ids", ())),
    )


@dataclass(frozen=True)
class MessageLimits:
    """The server's limits on one StepMany message (checked before anything is copied
    out of it): max_steps_per_message, max_tokens_per_message."""

    steps: int
    tokens: int


def step_columns(request: pb.StepManyRequest, limits: MessageLimits) -> StepColumns:
    """The steps of a StepMany message, from its columns (checked against each other and
    against the limits; INVALID_ARGUMENT for the stream, the proto's contract)."""
    count = len(request.session_ids)
    if count > limits.steps:
        raise out_of_range(
            "session_ids", count, f"0 .. {limits.steps} steps per message (max_steps_per_message)"
        )
    for name in ("texts", "request_ids", "lengths", "value_counts"):
        if len(getattr(request, name)) not in (0, count):
            raise out_of_range(
                name, f"{len(getattr(request, name))} entries", f"0 or {count} (one per step)"
            )
    texts = sum(map(len, request.texts))
    if len(request.tokens) + texts > limits.tokens:
        raise out_of_range(
            "tokens",
            f"{len(request.tokens)} ids and {texts} code points of text",
            f"at most {limits.tokens} in all per message (max_tokens_per_message)",
        )
    k = request.top_k if request.HasField("top_k") else None
    top = count * (DEFAULT_TOP_K if k is None else k)
    if top > MAX_TOP_PER_MESSAGE:
        raise out_of_range(
            "top_k",
            k,
            f"at most {MAX_TOP_PER_MESSAGE // max(count, 1)} for {count} steps "
            f"(top_k x steps <= {MAX_TOP_PER_MESSAGE} per message)",
        )
    lengths = list(request.lengths) or None
    value_counts = list(request.value_counts) or None
    token_steps = range(count) if value_counts is None else [
        i for i, n in enumerate(value_counts) if not n
    ]  # fmt: skip
    expected = len(token_steps) if lengths is None else sum(lengths[i] for i in token_steps)
    if len(request.tokens) != expected:
        raise out_of_range(
            "tokens",
            f"{len(request.tokens)} entries",
            f"{expected} (the sum of lengths of the steps that take tokens)",
        )
    if value_counts is not None:
        if lengths is not None:
            both = [i for i, n in enumerate(value_counts) if n and lengths[i]]
            if both:
                raise out_of_range(
                    f"lengths[{both[0]}]",
                    lengths[both[0]],
                    "0 (the step takes vectors: value_counts is above 0)",
                )
        if len(request.vectors) != sum(value_counts):
            raise out_of_range(
                "vectors",
                f"{len(request.vectors)} entries",
                f"{sum(value_counts)} (the sum of value_counts)",
            )
    elif request.vectors:
        raise out_of_range("vectors", f"{len(request.vectors)} entries", "0 without value_counts")
    return StepColumns(
        session_ids=list(request.session_ids),
        tokens=list(request.tokens),
        lengths=lengths,
        texts=list(request.texts) or None,
        request_ids=list(request.request_ids) or None,
        k=k,
        vectors=request.vectors,
        value_counts=value_counts,
    )


def step_many_response(answer: StepManyAnswer) -> pb.StepManyResponse:
    """The columns of a StepMany answer."""
    response = pb.StepManyResponse()
    block = answer.whole()
    if block is not None:  # every step answered together, in order: whole columns
        count, k = block.ids.shape
        top_ids = block.ids.ravel().tolist()
        names = block.names
        response.steps.extend(block.steps)
        response.consumed.extend([1] * count)
        response.top_counts.extend([k] * count)
        response.top_ids.extend(top_ids)
        response.top_texts.extend([names[i] for i in top_ids])
        response.top_probabilities.extend(block.probabilities.ravel().tolist())
        width = block.values.shape[1]
        if width:
            response.value_counts.extend([width] * count)
            response.values.extend(block.values.ravel().tolist())
        return response
    steps, consumed, counts, value_counts = [], [], [], []
    ids: list[int] = []
    texts: list[str] = []
    probabilities: list[float] = []
    values: list[float] = []
    add_error = response.errors.add
    for index, out in enumerate(answer.in_order()):
        if isinstance(out, ServiceError):
            steps.append(0)
            consumed.append(0)
            counts.append(0)
            value_counts.append(0)
            add_error(index=index, code=out.code.value[0], message=bounded_details(out.message))
        else:
            top = out.top
            steps.append(out.steps)
            consumed.append(out.consumed)
            counts.append(len(top.ids))
            ids += top.ids
            texts += map(top.names.__getitem__, top.ids)
            probabilities += top.probabilities
            value_counts.append(len(out.values or ()))
            values += out.values or ()
    response.steps.extend(steps)
    response.consumed.extend(consumed)
    response.top_counts.extend(counts)
    response.top_ids.extend(ids)
    response.top_texts.extend(texts)
    response.top_probabilities.extend(probabilities)
    if values:
        response.value_counts.extend(value_counts)
        response.values.extend(values)
    return response
