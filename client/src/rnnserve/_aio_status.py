"""A workaround for grpc/grpc#36066 in grpc.aio bidirectional streams.

When the server ends a stream (a failed request) while grpc.aio is still writing further
requests, the failed write replaces the server's status with "INTERNAL: Internal error from
Core", about half the time with a few requests in flight. The server's status is still the one
set first, and done callbacks run right then, so recording it there recovers it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from rnnserve.errors import RnnServeError, from_rpc_error, from_status

_Result = TypeVar("_Result")


class FirstStatus:
    """The status a call first ended with."""

    def __init__(self, call: grpc.aio.Call) -> None:
        self._status: tuple[grpc.StatusCode, str] | None = None
        call.add_done_callback(self._record)

    def _record(self, call: grpc.aio.Call) -> None:
        code, details = _result_now(call.code()), _result_now(call.details())
        if code is not None and details is not None:
            self._status = (code, details)

    def error_for(self, error: grpc.RpcError) -> RnnServeError:
        """The typed error for `error`, or for the server's status where gRPC replaced it."""
        if (
            self._status is not None
            and error.code() is grpc.StatusCode.INTERNAL
            and self._status[0] not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL)
        ):
            code, details = self._status
            return from_status(code, details)
        return from_rpc_error(error)


def _result_now(coroutine: Coroutine[Any, Any, _Result]) -> _Result | None:
    """The result of a coroutine that finishes without waiting (a call's status, once set)."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return cast(_Result, finished.value)
    coroutine.close()
    return None
