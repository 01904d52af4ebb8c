"""The ``rnnserve.v1.RnnServe`` gRPC service: protobuf in, Engine calls, protobuf out.

Kept thin on purpose: validation, state and sampling live in the engine. Every handler
goes through ``_guarded``, the one place where errors become statuses and where calls
are counted and timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from rnnserve_server.auth import CURRENT_CALLER
from rnnserve_server.engine import (
    Engine,
    GenerateOptions,
    StepColumns,
    StepManyAnswer,
    StepOutput,
    TokenInput,
)
from rnnserve_server.errors import InvalidArgument, ServiceError, out_of_range
from rnnserve_server.generation import GenerateEvent
from rnnserve_server.metrics import Metrics
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
    "stop_token": pb.FINISH_REASON_STOP_TOKEN,
}


MAX_TOKENS_PER_MESSAGE = 256


def caller_of(context: Any) -> str:
    """Who owns the sessions a call creates and counts against max_sessions_per_caller:
    the authenticated caller's name ("user:alice") when authentication is on, else the
    caller's IP address ("ip:127.0.0.1"; "ip:[::1]"; a Unix socket's peer)."""
    authenticated = CURRENT_CALLER.get()
    if authenticated is not None:
        return "user:" + authenticated
    peer = context.peer() or ""
    transport, _, address = peer.partition(":")
    if transport in ("ipv4", "ipv6"):
        address = address.rsplit(":", 1)[0]
    return "ip:" + address


class Malformed:
    """A request whose bytes are not a valid protobuf message of the method's type.

    The deserializer hands this to the handler instead of raising, so the caller gets
    INVALID_ARGUMENT (gRPC itself would answer UNKNOWN) and the server logs no traceback.
    """

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name, self.error = type_name, error


def parsed(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidArgument(f"request: not a valid {request.type_name} message ({request.error})")
    return request


def _decoder(message_class: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Malformed(message_class.DESCRIPTOR.full_name, str(exc))

    return decode


def add_to_server(servicer: RnnServeServicer, server: grpc.aio.Server) -> None:
    """Register every method of the service with lenient request decoding (Malformed)."""
    service = pb.DESCRIPTOR.services_by_name["RnnServe"]
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {
        method.name: factories[(method.client_streaming, method.server_streaming)](
            getattr(servicer, method.name),
            request_deserializer=_decoder(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


MAX_DETAILS = 1024  # status details travel as a trailer; gRPC caps metadata at ~8-16 KiB


def bounded_details(message: str) -> str:
    """Status details never echo unbounded input (a 10k-character id, say) back."""
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 1] + "…"


def _log_fields(request: Any) -> dict[str, str]:
    """The session and model ids a request names, for structured (JSON) log lines."""
    fields = {}
    for name, key in (("session_id", "session"), ("model", "model"), ("name", "model")):
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            fields[key] = value[:64]
    return fields


def _guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Map ServiceError to its status, anything else to INTERNAL; count and time calls.

    Works for unary handlers (coroutines) and streaming ones (async generators).
    """
    method = handler.__name__
    streaming = inspect.isasyncgenfunction(handler)

    async def fail(
        self: RnnServeServicer, context: Any, exc: BaseException, request: Any = None
    ) -> None:
        extra = _log_fields(request)
        if isinstance(exc, ServiceError):
            log.info("%s -> %s: %s", method, exc.code.name, exc.message, extra=extra)
            self._done(method, exc.code.name)
            await context.abort(exc.code, bounded_details(exc.message))
        log.error("%s failed unexpectedly", method, exc_info=exc, extra=extra)
        self._done(method, "INTERNAL")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see server log")

    if streaming:

        @functools.wraps(handler)
        async def stream_wrapper(self: RnnServeServicer, request: Any, context: Any) -> Any:
            self._start()
            try:
                parsed(request)
                async for item in handler(self, request, context):
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                # A cancel that lands while gRPC writes a response closes the generator at
                # its yield (GeneratorExit) instead of cancelling the task: count both.
                self._cancelled(method)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await fail(self, context, exc, request)
            else:
                self._done(method, "OK")

        return stream_wrapper

    @functools.wraps(handler)
    async def unary_wrapper(self: RnnServeServicer, request: Any, context: Any) -> Any:
        self._start()
        try:
            reply = await handler(self, parsed(request), context)
        except asyncio.CancelledError:
            self._cancelled(method)
            raise
        except Exception as exc:
            await fail(self, context, exc, request)
            raise  # unreachable: abort raises
        self._done(method, "OK")
        return reply

    return unary_wrapper


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
        initial_state=manifest.initial_state.kind,
        conditions=list(manifest.conditions),
    )


def _token_input(request: Any, ids_field: str, text_field: str, oneof: str) -> TokenInput:
    which = request.WhichOneof(oneof)
    if which == ids_field:
        return TokenInput(ids=list(getattr(request, ids_field).ids))
    if which == text_field:
        return TokenInput(text=getattr(request, text_field))
    return TokenInput()


def _step_response(session_id: str, out: StepOutput) -> pb.StepResponse:
    response = pb.StepResponse()
    _fill_step_response(response, session_id, out)
    return response


def _fill_step_response(response: pb.StepResponse, session_id: str, out: StepOutput) -> None:
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


def _generate_response(session_id: str, events: list[GenerateEvent]) -> pb.GenerateResponse:
    """One response message for one or more consecutive events (the last one's status)."""
    last = events[-1]
    response = pb.GenerateResponse(
        session_id=session_id,
        steps=last.steps,
        finish_reason=_FINISH[last.finish_reason],
        matched_stop=last.matched_stop,
    )
    add = response.tokens.add
    for event in events:
        token = event.token
        if token is not None:
            add(id=token.id, text=token.text, probability=token.probability)
    return response


def _generate_options(request: Any) -> GenerateOptions:
    return GenerateOptions(
        max_tokens=request.max_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_k=request.top_k,
        top_p=request.top_p if request.HasField("top_p") else None,
        seed=request.seed if request.HasField("seed") else None,
        stop=list(getattr(request, "stop", ())),
        stop_token_ids=list(getattr(request, "stop_token_ids", ())),
    )


def step_columns(request: pb.StepManyRequest, limit: int) -> StepColumns:
    """The steps of a StepMany message, from its columns (checked against each other)."""
    count = len(request.session_ids)
    if count > limit:  # the proto's contract: INVALID_ARGUMENT for the stream
        raise out_of_range(
            "session_ids", count, f"0 .. {limit} steps per message (max_steps_per_message)"
        )
    for name in ("texts", "request_ids", "lengths"):
        if len(getattr(request, name)) not in (0, count):
            raise out_of_range(
                name, f"{len(getattr(request, name))} entries", f"0 or {count} (one per step)"
            )
    lengths = list(request.lengths) or None
    expected = count if lengths is None else sum(lengths)
    if len(request.tokens) != expected:
        raise out_of_range(
            "tokens", f"{len(request.tokens)} entries", f"{expected} (the sum of lengths)"
        )
    return StepColumns(
        session_ids=list(request.session_ids),
        tokens=list(request.tokens),
        lengths=lengths,
        texts=list(request.texts) or None,
        request_ids=list(request.request_ids) or None,
        k=request.top_k if request.HasField("top_k") else None,
    )


def step_many_response(answer: StepManyAnswer) -> pb.StepManyResponse:
    """The columns of a StepMany answer."""
    response = pb.StepManyResponse()
    if not answer.single and len(answer.blocks) == 1 and len(answer.blocks[0].rows) == answer.size:
        block = answer.blocks[0]  # every step answered together, in order: whole columns
        count, k = block.ids.shape
        top_ids = block.ids.ravel().tolist()
        names = block.names
        response.steps.extend(block.steps)
        response.consumed.extend([1] * count)
        response.top_counts.extend([k] * count)
        response.top_ids.extend(top_ids)
        response.top_texts.extend([names[i] for i in top_ids])
        response.top_probabilities.extend(block.probabilities.ravel().tolist())
        return response
    steps, consumed, counts = [], [], []
    ids: list[int] = []
    texts: list[str] = []
    probabilities: list[float] = []
    add_error = response.errors.add
    for index, out in enumerate(answer.in_order()):
        if isinstance(out, ServiceError):
            steps.append(0)
            consumed.append(0)
            counts.append(0)
            add_error(index=index, code=out.code.value[0], message=bounded_details(out.message))
        else:
            top = out.top
            steps.append(out.steps)
            consumed.append(out.consumed)
            counts.append(len(top.ids))
            ids += top.ids
            texts += map(top.names.__getitem__, top.ids)
            probabilities += top.probabilities
    response.steps.extend(steps)
    response.consumed.extend(consumed)
    response.top_counts.extend(counts)
    response.top_ids.extend(ids)
    response.top_texts.extend(texts)
    response.top_probabilities.extend(probabilities)
    return response


class RnnServeServicer(rnnserve_pb2_grpc.RnnServeServicer):
    def __init__(self, engine: Engine, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self._started: dict[int, float] = {}

    # ------------------------------------------------------------------ accounting

    def _start(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._started[id(task)] = time.perf_counter()

    def _elapsed(self) -> float:
        task = asyncio.current_task()
        began = self._started.pop(id(task), None) if task is not None else None
        return 0.0 if began is None else time.perf_counter() - began

    def _done(self, method: str, code: str) -> None:
        elapsed = self._elapsed()
        if self.metrics is not None:
            self.metrics.observe(method, code, elapsed)

    def _cancelled(self, method: str) -> None:
        self.engine.stats.cancel(method)
        self._done(method, "CANCELLED")

    async def _session(self, session_id: str, context: Any) -> Any:
        return await self.engine.sessions.lookup(session_id, caller_of(context))

    # ------------------------------------------------------------------ models

    @_guarded
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m) for m in self.engine.repository.list()])

    @_guarded
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelInfo:
        return model_info(self.engine.repository.get(request.name, request.version))

    @_guarded
    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: Any
    ) -> pb.ReloadModelsResponse:
        result = await self.engine.reload()
        return pb.ReloadModelsResponse(
            models=[model_info(m) for m in self.engine.repository.list()],
            added=result.added,
            removed=result.removed,
            refused=[pb.RefusedPackage(path=str(p), reason=r) for p, r in result.refused.items()],
        )

    # ------------------------------------------------------------------ sessions

    @_guarded
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        version = request.version
        if request.state and not version:  # an import names its own version
            version = self.engine.state_codec.peek_version(request.state) or 0
        model = self.engine.repository.get(request.model, version)
        session = await self.engine.create_session(
            model,
            idle_timeout_s=request.idle_timeout_s,
            owner=caller_of(context),
            seed=request.seed if request.HasField("seed") else None,
            state=request.state,
            source=_token_input(request, "source_tokens", "source_text", "source"),
            condition=request.condition,
        )
        return pb.Session(
            session_id=session.id,
            model=model_info(model),
            idle_timeout_s=int(session.idle_timeout_s),
        )

    @_guarded
    async def ForkSession(self, request: pb.ForkSessionRequest, context: Any) -> pb.Session:
        source = await self._session(request.session_id, context)
        copy = await self.engine.fork(
            source, idle_timeout_s=request.idle_timeout_s, owner=caller_of(context)
        )
        return pb.Session(
            session_id=copy.id,
            model=model_info(copy.model),
            idle_timeout_s=int(copy.idle_timeout_s),
        )

    @_guarded
    async def ExportSession(
        self, request: pb.ExportSessionRequest, context: Any
    ) -> pb.ExportSessionResponse:
        session = await self._session(request.session_id, context)
        data = await self.engine.export(session)
        return pb.ExportSessionResponse(state=data, steps=session.steps)

    @_guarded
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        steps = await self.engine.sessions.close_named(request.session_id, caller_of(context))
        return pb.CloseSessionResponse(steps=steps)

    # ------------------------------------------------------------------ steps

    async def _step(
        self, request: pb.StepRequest, context: Any, owner: str | None = None
    ) -> pb.StepResponse:
        session = await self.engine.sessions.lookup(
            request.session_id, caller_of(context) if owner is None else owner
        )
        out = await self.engine.step(
            session,
            _token_input(request, "tokens", "text", "input"),
            k=request.top_k if request.HasField("top_k") else None,
            full=request.return_distribution,
            request_id=request.request_id,
        )
        return _step_response(session.id, out)

    @_guarded
    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        return await self._step(request, context)

    @_guarded
    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any
    ) -> AsyncIterator[pb.StepResponse]:
        owner = caller_of(context)  # one caller for the whole stream
        async for request in request_iterator:
            yield await self._step(parsed(request), context, owner)

    @_guarded
    async def StepMany(
        self, request_iterator: AsyncIterator[pb.StepManyRequest], context: Any
    ) -> AsyncIterator[pb.StepManyResponse]:
        owner = caller_of(context)  # one caller for the whole stream
        async for request in request_iterator:
            message = step_columns(parsed(request), self.engine.config.max_steps_per_message)
            yield step_many_response(await self.engine.step_many(message, owner=owner))

    # ------------------------------------------------------------------ generation

    @_guarded
    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        session = await self._session(request.session_id, context)
        per_message = request.tokens_per_message
        if per_message > MAX_TOKENS_PER_MESSAGE:
            raise out_of_range("tokens_per_message", per_message, f"0 .. {MAX_TOKENS_PER_MESSAGE}")
        events = self.engine.generate(
            session,
            _token_input(request, "prompt_tokens", "prompt_text", "prompt"),
            dataclasses.replace(_generate_options(request), tokens_per_message=max(1, per_message)),
            request_id=request.request_id,
        )
        pending: list[GenerateEvent] = []
        # aclosing: if the caller goes away while a response is being sent, the
        # generation ends here and now (its session lock released, its state saved).
        async with contextlib.aclosing(events):
            async for event in events:
                pending.append(event)
                if len(pending) >= per_message or event.finish_reason is not None:
                    yield _generate_response(session.id, pending)
                    pending = []

    # ------------------------------------------------------------------ one-call conveniences

    @_guarded
    async def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:
        model = self.engine.repository.get(request.model, request.version)
        result = await self.engine.classify(
            model,
            _token_input(request, "tokens", "text", "input"),
            k=request.top_k if request.HasField("top_k") else None,
            every_step=request.every_step,
        )
        return pb.ClassifyResponse(
            top=[
                pb.TokenProbability(id=i, text=t, probability=p) for i, t, p in result.top.entries()
            ],
            final=pb.LabelProbabilities(probabilities=result.final),
            steps=[pb.LabelProbabilities(probabilities=row) for row in result.steps],
        )

    @_guarded
    async def Translate(self, request: pb.TranslateRequest, context: Any) -> pb.TranslateResponse:
        model = self.engine.repository.get(request.model, request.version)
        source = _token_input(request, "source_tokens", "source_text", "source")
        if not source.given:
            raise InvalidArgument("source: give source_tokens or source_text")
        tokens, finish = await self.engine.translate(
            model, source, _generate_options(request), owner=caller_of(context)
        )
        return pb.TranslateResponse(
            tokens=[
                pb.GeneratedToken(id=t.id, text=t.text, probability=t.probability) for t in tokens
            ],
            text="".join(t.text for t in tokens),
            finish_reason=_FINISH[finish],
        )
