"""Every gRPC status code from a real server becomes the right typed exception."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest

import rnnserve
from rnnserve.errors import from_rpc_error, typed_errors

if TYPE_CHECKING:
    from conftest import ToyServer

EXPECTED: dict[grpc.StatusCode, type[rnnserve.RnnServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: rnnserve.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: rnnserve.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: rnnserve.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: rnnserve.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: rnnserve.Unavailable,
    grpc.StatusCode.ABORTED: rnnserve.Aborted,
    grpc.StatusCode.DATA_LOSS: rnnserve.DataLoss,
    grpc.StatusCode.DEADLINE_EXCEEDED: rnnserve.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: rnnserve.Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: rnnserve.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: rnnserve.PermissionDenied,
    grpc.StatusCode.INTERNAL: rnnserve.Internal,
}
FAILURE_CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


def abort_with(toy: ToyServer, code: grpc.StatusCode) -> grpc.RpcError:
    with grpc.insecure_channel(toy.address) as channel:
        try:
            channel.unary_unary(toy.abort_method)(code.name.encode(), timeout=10)
        except grpc.RpcError as error:
            return error
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("code", FAILURE_CODES, ids=lambda code: code.name)
def test_each_status_code_maps_to_its_exception(toy: ToyServer, code: grpc.StatusCode) -> None:
    error = from_rpc_error(abort_with(toy, code))
    assert type(error) is EXPECTED.get(code, rnnserve.RnnServeError)
    assert error.code is code
    assert error.details == f"details of {code.name}"
    assert str(error) == f"{code.name}: details of {code.name}"


@pytest.mark.parametrize("code", FAILURE_CODES, ids=lambda code: code.name)
def test_async_errors_map_the_same_way(toy: ToyServer, code: grpc.StatusCode) -> None:
    async def call() -> grpc.RpcError:
        async with grpc.aio.insecure_channel(toy.address) as channel:
            try:
                await channel.unary_unary(toy.abort_method)(code.name.encode(), timeout=10)
            except grpc.aio.AioRpcError as error:
                return error
        raise AssertionError("the call did not fail")

    error = from_rpc_error(asyncio.run(call()))
    assert type(error) is EXPECTED.get(code, rnnserve.RnnServeError)
    assert (error.code, error.details) == (code, f"details of {code.name}")


def test_typed_errors_drop_the_grpc_exception_from_the_chain(toy: ToyServer) -> None:
    with pytest.raises(rnnserve.NotFound) as caught, typed_errors():
        raise abort_with(toy, grpc.StatusCode.NOT_FOUND)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_an_rpc_error_without_status_is_unknown() -> None:
    error = from_rpc_error(grpc.RpcError())
    assert type(error) is rnnserve.RnnServeError
    assert (error.code, error.details) == (grpc.StatusCode.UNKNOWN, "")


def test_every_subclass_is_caught_by_the_base_class() -> None:
    for subclass in EXPECTED.values():
        assert issubclass(subclass, rnnserve.RnnServeError)
        assert subclass.__name__ in rnnserve.__all__


def test_unreachable_server_is_unavailable() -> None:
    with (
        rnnserve.Client("127.0.0.1:1", timeout=5) as client,
        pytest.raises(rnnserve.Unavailable),
    ):
        client.list_models()
