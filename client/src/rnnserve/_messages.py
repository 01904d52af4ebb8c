"""Translation between the Python API and the rnnserve.v1 messages, in both directions.

Requests are validated while they are built (see `_validate`), so both clients share one
definition of a well-formed call.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper as _EnumType

from rnnserve import _validate
from rnnserve.types import (
    GeneratedChunk,
    GeneratedToken,
    ModelInfo,
    SessionInfo,
    StepInput,
    StepResult,
    TokenProb,
    Vocabulary,
)
from rnnserve.v1 import rnnserve_pb2 as pb

# ---------------------------------------------------------------- requests


def get_model_request(name: str, version: int) -> pb.GetModelRequest:
    """GetModel; version 0 is the default (highest loaded) version."""
    _validate.string("name", name)
    return pb.GetModelRequest(name=name, version=_validate.unsigned("version", version, bits=32))


def create_session_request(
    model: str, version: int, idle_timeout_s: int
) -> pb.CreateSessionRequest:
    """CreateSession; 0 for version or idle timeout means the server's default."""
    _validate.string("model", model)
    return pb.CreateSessionRequest(
        model=model,
        version=_validate.unsigned("version", version, bits=32),
        idle_timeout_s=_validate.unsigned("idle_timeout_s", idle_timeout_s, bits=32),
    )


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
    if step.text is not None:
        request.text = step.text
    else:
        request.tokens.ids.extend(step.tokens or ())
    if step.top_k is not None:
        request.top_k = step.top_k
    return request


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
) -> pb.GenerateRequest:
    """Generate; unset optional values leave the server's defaults in effect."""
    _validate.string("session_id", session_id)
    request = pb.GenerateRequest(
        session_id=session_id,
        max_tokens=_validate.unsigned("max_tokens", max_tokens, bits=32),
        top_k=_validate.unsigned("top_k", top_k, bits=32),
        stop=_validate.stop_strings(stop),
    )
    if isinstance(prompt, str):
        _validate.one_input(None, prompt, names=("prompt tokens", "prompt"))
        request.prompt_text = prompt
    elif prompt is not None:
        request.prompt_tokens.ids.extend(
            _validate.one_input(prompt, None, names=("prompt", "prompt text")) or ()
        )
    if temperature is not None:
        request.temperature = _validate.real("temperature", temperature)
    if top_p is not None:
        request.top_p = _validate.real("top_p", top_p)
    if seed is not None:
        request.seed = _validate.unsigned("seed", seed, bits=64)
    return request


# ---------------------------------------------------------------- responses


def _enum_label(enum: _EnumType, value: int, prefix: str) -> str:
    """`TASK_SHAPE_MANY_TO_MANY` -> `many-to-many`; a value newer than these stubs stays visible."""
    try:
        name = enum.Name(value)
    except ValueError:
        return f"unknown-{value}"
    return name.removeprefix(prefix).lower().replace("_", "-")


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
        ),
        output=_enum_label(pb.OutputKind, message.output, "OUTPUT_KIND_"),
        labels=list(message.labels),
        description=message.description,
        state_bytes=message.state_bytes,
        metrics=dict(message.metrics),
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
        top=[TokenProb(t.id, t.text, t.probability) for t in message.top],
        distribution=list(message.distribution) or None,
    )


def generated_chunk(message: pb.GenerateResponse) -> GeneratedChunk:
    """GenerateResponse message -> dataclass."""
    tokens = [GeneratedToken(t.id, t.text, t.probability) for t in message.tokens]
    return GeneratedChunk(
        tokens=tokens,
        text="".join(token.text for token in tokens),
        steps=message.steps,
        finish_reason=None
        if message.finish_reason == pb.FINISH_REASON_UNSPECIFIED
        else _enum_label(pb.FinishReason, message.finish_reason, "FINISH_REASON_"),
        matched_stop=message.matched_stop or None,
    )
