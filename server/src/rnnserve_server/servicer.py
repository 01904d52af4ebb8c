"""The ``rnnserve.v1.RnnServe`` gRPC service: protobuf in, Engine calls, protobuf out.

Kept thin on purpose: validation, state and sampling live in the engine. Every handler
goes through ``_guard``, the one place where errors become statuses.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from rnnserve_server.engine import Engine, StepOutput
from rnnserve_server.errors import ServiceError
from rnnserve_server.repository import Model

log = logging.getLogger(__name__)

_SHAPES = {
    "one-to-one": pb.TASK_SHAPE_ONE_TO_ONE,
    "one-to-many": pb.TASK_SHAPE_ONE_TO_MANY,
    "many-to-one": pb.TASK_SHAPE_MANY_TO_ONE,
    "many-to-many": pb.TASK_SHAPE_MANY_TO_MANY,
    "seq2seq": pb.TASK_SHAPE_SEQ2SEQ,
}
_OUTPUTS = {
    "vocabulary": pb.OUTPUT_KIND_VOCABULARY,
    "labels": pb.OUTPUT_KIND_LABELS,
    "sigmoid": pb.OUTPUT_KIND_SIGMOID,
}
_FINISH = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "length": pb.FINISH_REASON_LENGTH,
    "end_token": pb.FINISH_REASON_END_TOKEN,
    "stop_string": pb.FINISH_REASON_STOP_STRING,
}

R = TypeVar("R")


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> None:
    if isinstance(exc, ServiceError):
        log.info("%s -> %s: %s", method, exc.code.name, exc.message)
        await context.abort(exc.code, exc.message)
    log.error("%s failed unexpectedly", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see server log")


def _guard_unary(
    handler: Callable[[Any, Any, Any], Awaitable[R]],
) -> Callable[[Any, Any, Any], Awaitable[R]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            await _abort(context, exc, handler.__name__)
            raise  # unreachable: abort raises

    return wrapper


def _guard_stream(
    handler: Callable[[Any, Any, Any], AsyncIterator[R]],
) -> Callable[[Any, Any, Any], AsyncIterator[R]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[R]:
        try:
            async for item in handler(self, request, context):
                yield item
        except Exception as exc:
            await _abort(context, exc, handler.__name__)

    return wrapper


def model_info(model: Model) -> pb.ModelInfo:
    manifest = model.package.manifest
    tokenizer = model.package.tokenizer
    return pb.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        shape=_SHAPES[manifest.shape],
        cell=manifest.cell,
        layers=manifest.layers,
        hidden_size=manifest.hidden_size,
        vocabulary=pb.Vocabulary(
            kind=tokenizer.kind, size=tokenizer.size, special_tokens=tokenizer.special_tokens
        ),
        output=_OUTPUTS[manifest.output.kind],
        labels=list(manifest.output.labels),
        description=manifest.description,
        state_bytes=manifest.layers * manifest.hidden_size * 4,
        metrics=manifest.metrics,
    )


def _step_response(session_id: str, out: StepOutput) -> pb.StepResponse:
    return pb.StepResponse(
        session_id=session_id,
        steps=out.steps,
        consumed=out.consumed,
        top=[pb.TokenProbability(id=i, text=t, probability=p) for i, t, p in out.top],
        distribution=out.distribution or [],
    )


def _input_of(request: Any, ids_field: str, text_field: str, oneof: str) -> dict[str, Any]:
    which = request.WhichOneof(oneof)
    return {
        "ids": list(getattr(request, ids_field).ids) if which == ids_field else None,
        "text": getattr(request, text_field) if which == text_field else None,
    }


class RnnServeServicer(rnnserve_pb2_grpc.RnnServeServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @_guard_unary
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m) for m in self.engine.repository.list()])

    @_guard_unary
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelInfo:
        return model_info(self.engine.repository.get(request.name, request.version))

    @_guard_unary
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        model = self.engine.repository.get(request.model, request.version)
        session = self.engine.sessions.create(model, idle_timeout_s=request.idle_timeout_s)
        return pb.Session(
            session_id=session.id,
            model=model_info(model),
            idle_timeout_s=int(session.idle_timeout_s),
        )

    @_guard_unary
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        session = self.engine.sessions.get(request.session_id)
        await self.engine.sessions.close(session)
        return pb.CloseSessionResponse(steps=session.steps)

    async def _step(self, request: pb.StepRequest) -> pb.StepResponse:
        session = self.engine.sessions.get(request.session_id)
        given = _input_of(request, "tokens", "text", "input")
        out = await self.engine.step(
            session,
            token_ids=given["ids"],
            text=given["text"],
            k=request.top_k if request.HasField("top_k") else None,
            full=request.return_distribution,
        )
        return _step_response(session.id, out)

    @_guard_unary
    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        return await self._step(request)

    @_guard_stream
    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any
    ) -> AsyncIterator[pb.StepResponse]:
        async for request in request_iterator:
            yield await self._step(request)

    @_guard_stream
    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        session = self.engine.sessions.get(request.session_id)
        given = _input_of(request, "prompt_tokens", "prompt_text", "prompt")
        events = self.engine.generate(
            session,
            prompt_ids=given["ids"],
            prompt_text=given["text"],
            max_tokens=request.max_tokens,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_k=request.top_k,
            top_p=request.top_p if request.HasField("top_p") else None,
            seed=request.seed if request.HasField("seed") else None,
            stop=list(request.stop),
        )
        async for event in events:
            tokens = []
            if event.token is not None:
                t = event.token
                tokens.append(pb.GeneratedToken(id=t.id, text=t.text, probability=t.probability))
            yield pb.GenerateResponse(
                session_id=session.id,
                tokens=tokens,
                steps=event.steps,
                finish_reason=_FINISH[event.finish_reason],
                matched_stop=event.matched_stop,
            )
