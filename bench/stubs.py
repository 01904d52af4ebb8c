"""A typed view of the generated ``rnnserve.v1.RnnServe`` stub for asyncio channels.

The generated ``*_pb2_grpc`` module carries no annotations; the load client states here
the request and response types of the methods it calls.
"""

from __future__ import annotations

from typing import Protocol, cast

import grpc.aio

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

# One connection carries every stream of a load client; no per-message size surprises.
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


# grpc.aio's end-of-stream marker for ``read()`` (missing from grpc-stubs).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class StepStreamCall(Protocol):
    """A StepStream call driven by write/read (grpc-stubs types only the iterator form);
    StepManyCall likewise."""

    async def write(self, request: pb.StepRequest) -> None: ...
    async def read(self) -> object: ...  # a StepResponse, or EOF
    async def done_writing(self) -> None: ...
    def cancel(self) -> bool: ...


class StepStreamMethod(Protocol):
    def __call__(self) -> StepStreamCall: ...


class StepManyCall(Protocol):
    async def write(self, request: pb.StepManyRequest) -> None: ...
    async def read(self) -> object: ...  # a StepManyResponse, or EOF
    async def done_writing(self) -> None: ...
    def cancel(self) -> bool: ...


class StepManyMethod(Protocol):
    def __call__(self) -> StepManyCall: ...


class RnnServeStub(Protocol):
    CreateSession: grpc.aio.UnaryUnaryMultiCallable[pb.CreateSessionRequest, pb.Session]
    CloseSession: grpc.aio.UnaryUnaryMultiCallable[pb.CloseSessionRequest, pb.CloseSessionResponse]
    Step: grpc.aio.UnaryUnaryMultiCallable[pb.StepRequest, pb.StepResponse]
    StepStream: StepStreamMethod
    StepMany: StepManyMethod
    Generate: grpc.aio.UnaryStreamMultiCallable[pb.GenerateRequest, pb.GenerateResponse]


def connect(address: str) -> tuple[grpc.aio.Channel, RnnServeStub]:
    """An insecure asyncio channel to ``address`` (127.0.0.1:port) and its stub."""
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    stub = rnnserve_pb2_grpc.RnnServeStub(channel)  # type: ignore[no-untyped-call]
    return channel, cast(RnnServeStub, stub)
