"""The ``rnnserve.v1.RnnServe`` gRPC service: protobuf in, Engine calls, protobuf out.

Kept thin on purpose: validation, state and sampling live in the engine, conversions in
``wire``. Every handler goes through ``rpc.guarded``, the one place where errors become
statuses and where calls are counted and timed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from rnnserve_server import calls
from rnnserve_server.errors import InvalidArgument, out_of_range
from rnnserve_server.generation import GenerateEvent
from rnnserve_server.repository import Model
from rnnserve_server.rpc import Accounted, caller_of, generic_handler, guarded, parsed
from rnnserve_server.wire import (
    FINISH,
    MessageLimits,
    generate_options,
    generate_response,
    generated_tokens,
    model_info,
    refused_packages,
    step_columns,
    step_many_response,
    step_response,
    token_input,
    training_model,
    vocabulary_page,
)

MAX_TOKENS_PER_MESSAGE = 256


def add_to_server(servicer: RnnServeServicer, server: grpc.aio.Server) -> None:
    """Register every method of the service with lenient request decoding."""
    service = pb.DESCRIPTOR.services_by_name["RnnServe"]
    server.add_generic_rpc_handlers((generic_handler(servicer, service, pb),))


class RnnServeServicer(Accounted, rnnserve_pb2_grpc.RnnServeServicer):
    SERVICE = pb.DESCRIPTOR.services_by_name["RnnServe"].full_name

    async def _session(self, session_id: str, context: Any) -> Any:
        session = await self.engine.sessions.lookup(session_id, caller_of(context))
        calls.bind(session=session.id, model=session.model)
        return session

    def _model(self, name: str, version: int) -> Model:
        model = self.engine.repository.get(name, version)
        calls.bind(model=model)
        return model

    # ------------------------------------------------------------------ models

    @guarded
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        repository = self.engine.repository
        return pb.ListModelsResponse(
            models=[model_info(m) for m in repository.list()],
            training=[training_model(mark) for mark in repository.training()],
        )

    @guarded
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelInfo:
        return model_info(self._model(request.name, request.version))

    @guarded
    async def GetVocabulary(
        self, request: pb.GetVocabularyRequest, context: Any
    ) -> pb.GetVocabularyResponse:
        model = self.engine.repository.get(request.model, request.version)
        return vocabulary_page(model, request.start, request.limit)

    @guarded
    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: Any
    ) -> pb.ReloadModelsResponse:
        result = await self.engine.reload()
        return pb.ReloadModelsResponse(
            models=[model_info(m) for m in self.engine.repository.list()],
            added=result.added,
            removed=result.removed,
            refused=refused_packages(result),
        )

    @guarded
    async def LoadModel(self, request: pb.LoadModelRequest, context: Any) -> pb.LoadModelResponse:
        result = await self.engine.load_model(request.name)
        return pb.LoadModelResponse(
            models=[model_info(m) for m in self.engine.repository.list() if m.name == request.name],
            added=result.added,
            removed=result.removed,
            refused=refused_packages(result),
        )

    @guarded
    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: Any
    ) -> pb.UnloadModelResponse:
        removed, still_open = await self.engine.unload_model(request.name, request.version)
        return pb.UnloadModelResponse(removed=removed, open_sessions=still_open)

    # ------------------------------------------------------------------ sessions

    @guarded
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        version = request.version
        if request.state and not version:  # an import names its own version
            version = self.engine.sessions.exported_version(request.state) or 0
        model = self._model(request.model, version)
        session = await self.engine.sessions.create(
            model,
            idle_timeout_s=request.idle_timeout_s,
            owner=caller_of(context),
            seed=request.seed if request.HasField("seed") else None,
            state=request.state,
            source=token_input(request, "source_tokens", "source_text", "source"),
            condition=request.condition,
        )
        calls.bind(session=session.id)
        return pb.Session(
            session_id=session.id,
            model=model_info(model),
            idle_timeout_s=int(session.idle_timeout_s),
        )

    @guarded
    async def ForkSession(self, request: pb.ForkSessionRequest, context: Any) -> pb.Session:
        source = await self._session(request.session_id, context)
        copy = await self.engine.sessions.fork(
            source, idle_timeout_s=request.idle_timeout_s, owner=caller_of(context)
        )
        return pb.Session(
            session_id=copy.id,
            model=model_info(copy.model),
            idle_timeout_s=int(copy.idle_timeout_s),
        )

    @guarded
    async def ExportSession(
        self, request: pb.ExportSessionRequest, context: Any
    ) -> pb.ExportSessionResponse:
        session = await self._session(request.session_id, context)
        data = await self.engine.sessions.export(session)
        return pb.ExportSessionResponse(state=data, steps=session.steps)

    @guarded
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
        calls.bind(session=session.id, model=session.model)
        out = await self.engine.steps.step(
            session,
            token_input(request, "tokens", "text", "input"),
            k=request.top_k if request.HasField("top_k") else None,
            full=request.return_distribution,
            request_id=request.request_id,
        )
        return step_response(session.id, out)

    @guarded
    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        return await self._step(request, context)

    @guarded
    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any
    ) -> AsyncIterator[pb.StepResponse]:
        owner = caller_of(context)  # one caller for the whole stream
        async for request in request_iterator:
            yield await self._step(parsed(request), context, owner)

    @guarded
    async def StepMany(
        self, request_iterator: AsyncIterator[pb.StepManyRequest], context: Any
    ) -> AsyncIterator[pb.StepManyResponse]:
        owner = caller_of(context)  # one caller for the whole stream
        config = self.engine.config
        limits = MessageLimits(config.max_steps_per_message, config.max_tokens_per_message)
        async for request in request_iterator:
            message = step_columns(parsed(request), limits)
            yield step_many_response(await self.engine.steps.many(message, owner=owner))

    # ------------------------------------------------------------------ generation

    @guarded
    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        session = await self._session(request.session_id, context)
        per_message = request.tokens_per_message
        if per_message > MAX_TOKENS_PER_MESSAGE:
            raise out_of_range("tokens_per_message", per_message, f"0 .. {MAX_TOKENS_PER_MESSAGE}")
        events = self.engine.generation.generate(
            session,
            token_input(request, "prompt_tokens", "prompt_text", "prompt"),
            dataclasses.replace(generate_options(request), tokens_per_message=max(1, per_message)),
            request_id=request.request_id,
        )
        pending: list[GenerateEvent] = []
        # aclosing: if the caller goes away while a response is being sent, the
        # generation ends here and now (its session lock released, its state saved).
        async with contextlib.aclosing(events):
            async for event in events:
                pending.append(event)
                if len(pending) >= per_message or event.finish_reason is not None:
                    yield generate_response(session.model, session.id, pending)
                    pending = []

    # ------------------------------------------------------------------ one-call conveniences

    @guarded
    async def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:
        model = self._model(request.model, request.version)
        result = await self.engine.conveniences.classify(
            model,
            token_input(request, "tokens", "text", "input"),
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

    @guarded
    async def Translate(self, request: pb.TranslateRequest, context: Any) -> pb.TranslateResponse:
        model = self._model(request.model, request.version)
        source = token_input(request, "source_tokens", "source_text", "source")
        if not source.given:
            raise InvalidArgument("source: give source_tokens or source_text")
        tokens, finish = await self.engine.conveniences.translate(
            model, source, generate_options(request), owner=caller_of(context)
        )
        return pb.TranslateResponse(
            tokens=generated_tokens(model, tokens),
            text="".join(t.text for t in tokens),
            finish_reason=FINISH[finish],
        )
