"""Typed views of the generated gRPC stubs.

The generated `*_pb2_grpc` modules carry no annotations, so each stub is wrapped once here in a
Protocol that states the request and response types of every method; the rest of the client is
then checked by mypy end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rnnserve.errors import NotFound
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

RNNSERVE_SERVICE = pb.DESCRIPTOR.services_by_name["RnnServe"].full_name


class RnnServeStub(Protocol):
    """rnnserve.v1.RnnServe on a blocking channel."""

    ListModels: grpc.UnaryUnaryMultiCallable[pb.ListModelsRequest, pb.ListModelsResponse]
    GetModel: grpc.UnaryUnaryMultiCallable[pb.GetModelRequest, pb.ModelInfo]
    GetVocabulary: grpc.UnaryUnaryMultiCallable[pb.GetVocabularyRequest, pb.GetVocabularyResponse]
    CreateSession: grpc.UnaryUnaryMultiCallable[pb.CreateSessionRequest, pb.Session]
    ForkSession: grpc.UnaryUnaryMultiCallable[pb.ForkSessionRequest, pb.Session]
    ExportSession: grpc.UnaryUnaryMultiCallable[pb.ExportSessionRequest, pb.ExportSessionResponse]
    CloseSession: grpc.UnaryUnaryMultiCallable[pb.CloseSessionRequest, pb.CloseSessionResponse]
    Step: grpc.UnaryUnaryMultiCallable[pb.StepRequest, pb.StepResponse]
    StepStream: grpc.StreamStreamMultiCallable[pb.StepRequest, pb.StepResponse]
    StepMany: grpc.StreamStreamMultiCallable[pb.StepManyRequest, pb.StepManyResponse]
    Generate: grpc.UnaryStreamMultiCallable[pb.GenerateRequest, pb.GenerateResponse]
    Classify: grpc.UnaryUnaryMultiCallable[pb.ClassifyRequest, pb.ClassifyResponse]
    Translate: grpc.UnaryUnaryMultiCallable[pb.TranslateRequest, pb.TranslateResponse]
    ReloadModels: grpc.UnaryUnaryMultiCallable[pb.ReloadModelsRequest, pb.ReloadModelsResponse]
    LoadModel: grpc.UnaryUnaryMultiCallable[pb.LoadModelRequest, pb.LoadModelResponse]
    UnloadModel: grpc.UnaryUnaryMultiCallable[pb.UnloadModelRequest, pb.UnloadModelResponse]


class AsyncRnnServeStub(Protocol):
    """rnnserve.v1.RnnServe on an asyncio channel."""

    ListModels: grpc.aio.UnaryUnaryMultiCallable[pb.ListModelsRequest, pb.ListModelsResponse]
    GetModel: grpc.aio.UnaryUnaryMultiCallable[pb.GetModelRequest, pb.ModelInfo]
    GetVocabulary: grpc.aio.UnaryUnaryMultiCallable[
        pb.GetVocabularyRequest, pb.GetVocabularyResponse
    ]
    CreateSession: grpc.aio.UnaryUnaryMultiCallable[pb.CreateSessionRequest, pb.Session]
    ForkSession: grpc.aio.UnaryUnaryMultiCallable[pb.ForkSessionRequest, pb.Session]
    ExportSession: grpc.aio.UnaryUnaryMultiCallable[
        pb.ExportSessionRequest, pb.ExportSessionResponse
    ]
    CloseSession: grpc.aio.UnaryUnaryMultiCallable[pb.CloseSessionRequest, pb.CloseSessionResponse]
    Step: grpc.aio.UnaryUnaryMultiCallable[pb.StepRequest, pb.StepResponse]
    StepStream: grpc.aio.StreamStreamMultiCallable[pb.StepRequest, pb.StepResponse]
    StepMany: grpc.aio.StreamStreamMultiCallable[pb.StepManyRequest, pb.StepManyResponse]
    Generate: grpc.aio.UnaryStreamMultiCallable[pb.GenerateRequest, pb.GenerateResponse]
    Classify: grpc.aio.UnaryUnaryMultiCallable[pb.ClassifyRequest, pb.ClassifyResponse]
    Translate: grpc.aio.UnaryUnaryMultiCallable[pb.TranslateRequest, pb.TranslateResponse]
    ReloadModels: grpc.aio.UnaryUnaryMultiCallable[pb.ReloadModelsRequest, pb.ReloadModelsResponse]
    LoadModel: grpc.aio.UnaryUnaryMultiCallable[pb.LoadModelRequest, pb.LoadModelResponse]
    UnloadModel: grpc.aio.UnaryUnaryMultiCallable[pb.UnloadModelRequest, pb.UnloadModelResponse]


class HealthStub(Protocol):
    """grpc.health.v1.Health.Check on a blocking channel (its messages are untyped)."""

    Check: grpc.UnaryUnaryMultiCallable[object, object]


class AsyncHealthStub(Protocol):
    """grpc.health.v1.Health.Check on an asyncio channel (its messages are untyped)."""

    Check: grpc.aio.UnaryUnaryMultiCallable[object, object]


def rnnserve_stub(channel: grpc.Channel) -> RnnServeStub:
    """The RnnServe stub for a blocking channel."""
    stub = rnnserve_pb2_grpc.RnnServeStub(channel)  # type: ignore[no-untyped-call]
    return cast(RnnServeStub, stub)


def async_rnnserve_stub(channel: grpc.aio.Channel) -> AsyncRnnServeStub:
    """The RnnServe stub for an asyncio channel."""
    stub = rnnserve_pb2_grpc.RnnServeStub(channel)  # type: ignore[no-untyped-call]
    return cast(AsyncRnnServeStub, stub)


def health_stub(channel: grpc.Channel) -> HealthStub:
    """The health-checking stub for a blocking channel."""
    return cast(HealthStub, health_pb2_grpc.HealthStub(channel))


def async_health_stub(channel: grpc.aio.Channel) -> AsyncHealthStub:
    """The health-checking stub for an asyncio channel."""
    return cast(AsyncHealthStub, health_pb2_grpc.HealthStub(channel))


def health_request(service: str) -> object:
    """A HealthCheckRequest for `service` ("" asks about the server as a whole)."""
    return cast(object, health_pb2.HealthCheckRequest(service=service))


def health_status(response: object) -> str:
    """The status name of a HealthCheckResponse: "SERVING", "NOT_SERVING", ..."""
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
        cast(health_pb2.HealthCheckResponse, response).status
    )
    return str(status)


@contextmanager
def health_errors(service: str) -> Iterator[None]:
    """The health service answers a service it does not know with a bare NOT_FOUND; say
    which name was asked and which ones an rnnserve server knows."""
    try:
        yield
    except NotFound as error:
        if error.details:
            raise
        raise NotFound(
            error.code,
            f"the health service knows no service {service!r}; an rnnserve server reports "
            f"on '' (the server), {RNNSERVE_SERVICE} and {RNNSERVE_SERVICE}/<model> for "
            "each model it has loaded (`rnnserve models`)",
        ) from None
