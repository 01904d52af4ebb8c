"""Translation between the Python API and the rnnserve.v1 messages, in both directions.

Requests are validated while they are built (see `_validate`), so both clients share one
definition of a well-formed call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper as _EnumType

from rnnserve import _validate
from rnnserve.errors import RnnServeError, from_code_number
from rnnserve.types import (
    ClassifyResult,
    GeneratedChunk,
    GeneratedToken,
    ModelInfo,
    RefusedPackage,
    ReloadResult,
    SessionInfo,
    StatePart,
    StepInput,
    StepResult,
    TokenizerRules,
    TokenProb,
    TrainingModel,
    TranslateResult,
    UnloadResult,
    Vocabulary,
)
from rnnserve.v1 import rnnserve_pb2 as pb

# ---------------------------------------------------------------- requests


def get_model_request(name: str, version: int) -> pb.GetModelRequest:
    """GetModel; version 0 is the model's default version."""
    _validate.string("name", name)
    return pb.GetModelRequest(name=name, version=_validate.unsigned("version", version, bits=32))


def load_model_request(name: str) -> pb.LoadModelRequest:
    _validate.string("name", name)
    return pb.LoadModelRequest(name=name)


def unload_model_request(name: str, version: int) -> pb.UnloadModelRequest:
    """UnloadModel; version 0 is every version of the model."""
    _validate.string("name", name)
    return pb.UnloadModelRequest(name=name, version=_validate.unsigned("version", version, bits=32))


def unload_result(message: pb.UnloadModelResponse) -> UnloadResult:
    return UnloadResult(removed=list(message.removed), open_sessions=message.open_sessions)


def _set_sequence(
    request: Any, name: str, value: str | Sequence[int], *, text_field: str, tokens_field: str
) -> None:
    """Fill a request's text-or-token-ids oneof: a str is text, anything else token ids."""
    checked = _validate.text_or_tokens(name, value)
    if isinstance(checked, str):
        setattr(request, text_field, checked)
    else:
        getattr(request, tokens_field).ids.extend(checked)


def create_session_request(
    model: str,
    version: int,
    idle_timeout_s: int,
    *,
    seed: int | None,
    state: bytes | None,
    source: str | Sequence[int] | None,
    condition: str | None,
) -> pb.CreateSessionRequest:
    """CreateSession; 0 for version or idle timeout means the server's default.

    Whether the model needs `source` or `condition`, and whether `state` fits it, is the
    server's to say (it knows the model).
    """
    _validate.string("model", model)
    request = pb.CreateSessionRequest(
        model=model,
        version=_validate.unsigned("version", version, bits=32),
        idle_timeout_s=_validate.unsigned("idle_timeout_s", idle_timeout_s, bits=32),
    )
    if seed is not None:
        request.seed = _validate.unsigned("seed", seed, bits=64)
    if state is not None:
        exported = _validate.data("state", state)
        if not exported:
            # The wire cannot tell empty bytes from no import: refuse rather than start afresh.
            raise ValueError(
                "state must be the bytes of an export, not empty; "
                "leave it None to start from the model's initial state"
            )
        request.state = exported
    if source is not None:
        _set_sequence(
            request, "source", source, text_field="source_text", tokens_field="source_tokens"
        )
    if condition is not None:
        request.condition = _validate.string("condition", condition)
    return request


def fork_session_request(session_id: str, idle_timeout_s: int) -> pb.ForkSessionRequest:
    """ForkSession; idle timeout 0 means the server's default."""
    _validate.string("session_id", session_id)
    return pb.ForkSessionRequest(
        session_id=session_id,
        idle_timeout_s=_validate.unsigned("idle_timeout_s", idle_timeout_s, bits=32),
    )


def export_session_request(session_id: str) -> pb.ExportSessionRequest:
    """ExportSession."""
    _validate.string("session_id", session_id)
    return pb.ExportSessionRequest(session_id=session_id)


def close_session_request(session_id: str) -> pb.CloseSessionRequest:
    """CloseSession."""
    _validate.string("session_id", session_id)
    return pb.CloseSessionRequest(session_id=session_id)


def step_request(step: StepInput) -> pb.StepRequest:
    """Step and StepStream; `step` was validated when it was constructed."""
    if not isinstance(step, StepInput):
        raise TypeError(f"expected a rnnserve.StepInput, got {type(step).__name__}")
    request = pb.StepRequest(
        session_id=step.session_id, return_distribution=bool(step.return_distribution)
    )
    if step.vectors is not None:
        request.vectors.steps = len(step.vectors)
        request.vectors.values.extend(v for vector in step.vectors for v in vector)
    elif step.text is not None:
        request.text = step.text
    else:
        request.tokens.ids.extend(step.tokens or ())
    if step.top_k is not None:
        request.top_k = step.top_k
    return request


def step_many_request(steps: Sequence[StepInput]) -> pb.StepManyRequest:
    """One StepMany message: a sequence of `StepInput`s as columns. Every step of a
    message shares one `top_k`; StepMany returns no full distributions."""
    if isinstance(steps, StepInput) or not isinstance(steps, Sequence):
        raise TypeError(
            "each step_many message must be a sequence of rnnserve.StepInput, "
            f"got {type(steps).__name__}"
        )
    for step in steps:
        if not isinstance(step, StepInput):
            raise TypeError(f"expected a rnnserve.StepInput, got {type(step).__name__}")
        if step.return_distribution:
            raise ValueError(
                "step_many returns no full distributions; use step_stream (or step) for those"
            )
    top_ks = {step.top_k for step in steps}
    if len(top_ks) > 1:
        raise ValueError(
            "every step of one step_many message takes the same top_k; got "
            + ", ".join(sorted(map(str, top_ks)))
        )
    request = pb.StepManyRequest(session_ids=[step.session_id for step in steps])
    token_steps = [step for step in steps if step.vectors is None]
    if any(step.text is not None or len(step.tokens or ()) != 1 for step in token_steps):
        request.lengths.extend(len(step.tokens or ()) for step in steps)
        if any(step.text is not None for step in steps):
            request.texts.extend(step.text or "" for step in steps)
    if len(token_steps) < len(steps):
        request.value_counts.extend(sum(map(len, step.vectors or ())) for step in steps)
        for step in steps:
            request.vectors.extend(v for vector in step.vectors or () for v in vector)
    for step in steps:
        request.tokens.extend(step.tokens or ())
    (top_k,) = top_ks or {None}
    if top_k is not None:
        request.top_k = top_k
    return request


def step_outcomes(
    message: pb.StepManyResponse, session_ids: Sequence[str]
) -> list[StepResult | RnnServeError]:
    """StepManyResponse -> one `StepResult`, or the typed error of a failed step, per step
    of the request that named ``session_ids``."""
    errors = {e.index: from_code_number(e.code, e.message) for e in message.errors}
    ids, texts = list(message.top_ids), list(message.top_texts)
    probabilities = list(message.top_probabilities)
    values = list(message.values)
    value_counts = list(message.value_counts) or [0] * len(session_ids)
    results: list[StepResult | RnnServeError] = []
    at = value_at = 0
    for index, (session_id, steps, consumed, count, value_count) in enumerate(
        zip(
            session_ids,
            message.steps,
            message.consumed,
            message.top_counts,
            value_counts,
            strict=True,
        )
    ):
        error = errors.get(index)
        if error is not None:
            results.append(error)
            continue
        top = [TokenProb(ids[j], texts[j], probabilities[j]) for j in range(at, at + count)]
        at += count
        own = values[value_at : value_at + value_count] or None
        value_at += value_count
        results.append(StepResult(session_id, steps, consumed, top, None, own))
    return results


class StepManyStream:
    """The two ends of one StepMany stream: each answer belongs to the oldest request not
    yet answered (requests may be converted on gRPC's sending thread; a deque's append
    and popleft are thread-safe)."""

    def __init__(self) -> None:
        self._sent: deque[list[str]] = deque()

    def request(self, steps: Sequence[StepInput]) -> pb.StepManyRequest:
        message = step_many_request(steps)
        self._sent.append(list(message.session_ids))
        return message

    def outcomes(self, message: pb.StepManyResponse) -> list[StepResult | RnnServeError]:
        return step_outcomes(message, self._sent.popleft())


def _sampling(
    request: pb.GenerateRequest | pb.TranslateRequest,
    *,
    max_tokens: int,
    temperature: float | None,
    top_k: int,
    top_p: float | None,
    seed: int | None,
) -> None:
    """The sampling fields Generate and Translate share; None leaves the server's default."""
    request.max_tokens = _validate.unsigned("max_tokens", max_tokens, bits=32)
    request.top_k = _validate.unsigned("top_k", top_k, bits=32)
    if temperature is not None:
        request.temperature = _validate.real("temperature", temperature)
    if top_p is not None:
        request.top_p = _validate.real("top_p", top_p)
    if seed is not None:
        request.seed = _validate.unsigned("seed", seed, bits=64)


def generate_request(
    session_id: str,
    prompt: str | Sequence[int] | None,
    *,
    max_tokens: int,
    temperature: float | None,
    top_k: int,
    top_p: float | None,
    seed: int | None,
    stop: str | Sequence[str],
    stop_token_ids: Sequence[int],
    tokens_per_message: int = 0,
) -> pb.GenerateRequest:
    """Generate; unset optional values leave the server's defaults in effect."""
    _validate.string("session_id", session_id)
    request = pb.GenerateRequest(
        session_id=session_id,
        stop=_validate.stop_strings(stop),
        stop_token_ids=_validate.token_ids("stop_token_ids", stop_token_ids),
        tokens_per_message=_validate.unsigned("tokens_per_message", tokens_per_message, bits=32),
    )
    if prompt is not None:
        _set_sequence(
            request, "prompt", prompt, text_field="prompt_text", tokens_field="prompt_tokens"
        )
    _sampling(
        request, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    return request


def classify_request(
    model: str,
    text: str | None,
    tokens: Sequence[int] | None,
    *,
    version: int,
    top_k: int | None,
    every_step: bool,
    vectors: Sequence[Sequence[float]] | None = None,
) -> pb.ClassifyRequest:
    """Classify; exactly one of `text`, `tokens` and `vectors`; `top_k` None leaves the
    default (5)."""
    _validate.string("model", model)
    request = pb.ClassifyRequest(
        model=model,
        version=_validate.unsigned("version", version, bits=32),
        every_step=bool(every_step),
    )
    if vectors is not None:
        if text is not None or tokens is not None:
            raise ValueError("pass exactly one of text=, tokens= and vectors=")
        checked = _validate.vectors("vectors", vectors)
        request.vectors.steps = len(checked)
        request.vectors.values.extend(v for vector in checked for v in vector)
    elif (ids := _validate.one_input(tokens, text, names=("tokens", "text"))) is None:
        request.text = text or ""
    else:
        request.tokens.ids.extend(ids)
    if top_k is not None:
        request.top_k = _validate.unsigned("top_k", top_k, bits=32)
    return request


def translate_request(
    model: str,
    source: str | Sequence[int],
    *,
    version: int,
    max_tokens: int,
    temperature: float | None,
    top_k: int,
    top_p: float | None,
    seed: int | None,
) -> pb.TranslateRequest:
    """Translate; unset optional values leave the server's defaults (greedy decoding)."""
    _validate.string("model", model)
    request = pb.TranslateRequest(
        model=model, version=_validate.unsigned("version", version, bits=32)
    )
    _set_sequence(request, "source", source, text_field="source_text", tokens_field="source_tokens")
    _sampling(
        request, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    return request


# ---------------------------------------------------------------- responses


def _enum_label(enum: _EnumType, value: int, prefix: str) -> str:
    """`TASK_SHAPE_MANY_TO_MANY` -> `many-to-many`; a value newer than these stubs stays visible."""
    try:
        name = enum.Name(value)
    except ValueError:
        return f"unknown-{value}"
    return name.removeprefix(prefix).lower().replace("_", "-")


def training_model(message: pb.TrainingModel) -> TrainingModel:
    """TrainingModel message -> dataclass."""
    return TrainingModel(
        name=message.name,
        phase=message.phase,
        step=message.step,
        steps=message.steps,
        seconds=message.seconds,
    )


def model_info(message: pb.ModelInfo) -> ModelInfo:
    """ModelInfo message -> dataclass."""
    return ModelInfo(
        name=message.name,
        version=message.version,
        shape=_enum_label(pb.TaskShape, message.shape, "TASK_SHAPE_"),
        cell=message.cell,
        layers=message.layers,
        hidden_size=message.hidden_size,
        vocabulary=Vocabulary(
            kind=message.vocabulary.kind,
            size=message.vocabulary.size,
            special_tokens=dict(message.vocabulary.special_tokens),
        )
        if message.HasField("vocabulary")
        else None,
        output=_enum_label(pb.OutputKind, message.output, "OUTPUT_KIND_"),
        labels=list(message.labels),
        description=message.description,
        state_bytes=message.state_bytes,
        metrics=dict(message.metrics),
        initial_state=message.initial_state,
        conditions=list(message.conditions),
        input=_enum_label(pb.InputKind, message.input, "INPUT_KIND_"),
        input_size=message.input_size,
        values=message.values,
        state_parts=[
            StatePart(p.name, p.rows, p.bound if p.HasField("bound") else None)
            for p in message.state_parts
        ],
        state_width=message.state_width,
        output_before_input=message.output_before_input,
    )


def vocabulary_request(model: str, version: int, start: int) -> pb.GetVocabularyRequest:
    """One page of GetVocabulary, from token id `start` (the server's page size)."""
    _validate.string("model", model)
    return pb.GetVocabularyRequest(
        model=model, version=_validate.unsigned("version", version, bits=32), start=start
    )


def tokenizer_rules(message: pb.TokenizerRules) -> TokenizerRules:
    return TokenizerRules(
        kind=message.kind,
        normalization=message.normalization,
        lowercase=message.lowercase,
        word_pattern=message.word_pattern,
        offsets=message.offsets,
        separator=message.separator,
        unknown_text=message.unknown_text,
        attached=list(message.attached),
        attached_categories=list(message.attached_categories),
    )


def session_info(message: pb.Session) -> SessionInfo:
    """Session message -> dataclass."""
    return SessionInfo(
        id=message.session_id,
        model=model_info(message.model),
        idle_timeout_s=message.idle_timeout_s,
    )


def step_result(message: pb.StepResponse) -> StepResult:
    """StepResponse message -> dataclass; no distribution unless the server sent one."""
    return StepResult(
        session_id=message.session_id,
        steps=message.steps,
        consumed=message.consumed,
        top=_token_probs(message.top),
        distribution=list(message.distribution) or None,
        values=list(message.values) or None,
    )


def _token_probs(messages: Sequence[pb.TokenProbability]) -> list[TokenProb]:
    return [TokenProb(t.id, t.text, t.probability) for t in messages]


def _generated_tokens(messages: Sequence[pb.GeneratedToken]) -> list[GeneratedToken]:
    return [GeneratedToken(t.id, t.text, t.probability, t.piece) for t in messages]


def _finish_reason(value: int) -> str | None:
    """FINISH_REASON_STOP_TOKEN -> "stop-token"; None while generation runs."""
    if value == pb.FINISH_REASON_UNSPECIFIED:
        return None
    return _enum_label(pb.FinishReason, value, "FINISH_REASON_")


def generated_chunk(message: pb.GenerateResponse) -> GeneratedChunk:
    """GenerateResponse message -> dataclass."""
    tokens = _generated_tokens(message.tokens)
    return GeneratedChunk(
        tokens=tokens,
        text="".join(token.piece for token in tokens),
        steps=message.steps,
        finish_reason=_finish_reason(message.finish_reason),
        matched_stop=message.matched_stop or None,
    )


def classify_result(message: pb.ClassifyResponse) -> ClassifyResult:
    """ClassifyResponse message -> dataclass."""
    return ClassifyResult(
        top=_token_probs(message.top),
        final=list(message.final.probabilities),
        steps=[list(row.probabilities) for row in message.steps],
    )


def translate_result(message: pb.TranslateResponse) -> TranslateResult:
    """TranslateResponse message -> dataclass."""
    return TranslateResult(
        tokens=_generated_tokens(message.tokens),
        text=message.text,
        finish_reason=_enum_label(pb.FinishReason, message.finish_reason, "FINISH_REASON_"),
    )


def reload_result(message: pb.ReloadModelsResponse | pb.LoadModelResponse) -> ReloadResult:
    """ReloadModelsResponse or LoadModelResponse message -> dataclass."""
    return ReloadResult(
        models=[model_info(model) for model in message.models],
        added=list(message.added),
        removed=list(message.removed),
        refused=[RefusedPackage(r.path, r.reason) for r in message.refused],
    )
