"""Typed exceptions for failed rnnserve calls.

Every `grpc.RpcError` the client sees is re-raised as one `RnnServeError` subclass chosen by
its status code, so callers catch `rnnserve.NotFound` instead of inspecting gRPC internals.
The original gRPC exception is dropped from the chain (`raise ... from None`): its repr is a
wall of C-core debug text that hides the one line that matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

RETRY_PUSHBACK = "grpc-retry-pushback-ms"


class RnnServeError(Exception):
    """A call failed; `code` is the gRPC status code and `details` the server's message.

    `retry_after_s` is when the server says a retry can succeed (its gRPC retry pushback,
    sent with RESOURCE_EXHAUSTED from a caller's token budget): seconds to wait,
    `math.inf` where the same request cannot succeed (over a size limit), None where
    the server does not say.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retry_after_s = retry_after_s


class InvalidArgument(RnnServeError):
    """A field was out of range or malformed; the details name the field and the range."""


class NotFound(RnnServeError):
    """Unknown model, model version or session (closed and expired sessions are unknown)."""


class ResourceExhausted(RnnServeError):
    """A server limit was reached (sessions, request sizes, generation length, the
    caller's calls in flight or tokens per second); the details name the setting and
    `retry_after_s` says when a retry can succeed where the server knows."""


class FailedPrecondition(RnnServeError):
    """The call does not fit the model (e.g. generating from a classifier)."""


class Aborted(RnnServeError):
    """Another call changed the session at the same time (through another replica of a
    scaled-out server); this call's change was not kept. Retrying it is safe."""


class DataLoss(RnnServeError):
    """The session's stored record failed its integrity check (changed outside rnnserve, or
    written by a replica with other state keys); the session cannot continue."""


class Unavailable(RnnServeError):
    """The server cannot be reached or is shutting down; retrying later may succeed."""


class DeadlineExceeded(RnnServeError):
    """The call's timeout passed before the server answered."""


class Cancelled(RnnServeError):
    """The call was cancelled."""


class Unauthenticated(RnnServeError):
    """The server requires credentials (a bearer token) that were missing or invalid."""


class PermissionDenied(RnnServeError):
    """The credentials are valid but do not allow this call."""


class Internal(RnnServeError):
    """An unexpected server error; the server logged its traceback."""


_BY_CODE: dict[grpc.StatusCode, type[RnnServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(error: grpc.RpcError) -> RnnServeError:
    """Return the typed exception for a failed gRPC call.

    Codes without a subclass of their own (UNKNOWN, UNIMPLEMENTED, ...) give a plain
    `RnnServeError` that still carries the code. A stream reset by a proxy mid-call
    (gRPC's INTERNAL "Received RST_STREAM with error code 2") is `Unavailable`: that is
    what a load balancer does when the replica behind it dies.
    """
    # A bare grpc.RpcError() carries no status; the ones raised by calls always do.
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    details = (details_of() if callable(details_of) else None) or ""
    if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details:
        # Not the server's INTERNAL ("internal error in <method>; see server log"): a proxy
        # reset the stream (HTTP/2 INTERNAL_ERROR) as the replica behind it went away.
        code = grpc.StatusCode.UNAVAILABLE
        details = f"the stream was reset on its way (its server went away?): {details}"
    return from_status(code, details, _pushback(error))


def _pushback(error: grpc.RpcError) -> float | None:
    """The server's retry pushback (gRFC A6) in seconds; math.inf for "do not retry"."""
    trailing_of = getattr(error, "trailing_metadata", None)
    for key, value in (trailing_of() if callable(trailing_of) else None) or ():
        if key == RETRY_PUSHBACK:
            try:
                milliseconds = int(value)
            except (TypeError, ValueError):
                return math.inf
            return math.inf if milliseconds < 0 else milliseconds / 1000
    return None


def from_status(
    code: grpc.StatusCode, details: str, retry_after_s: float | None = None
) -> RnnServeError:
    """Return the typed exception for a status code and its details."""
    return _BY_CODE.get(code, RnnServeError)(code, details, retry_after_s)


_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def from_code_number(number: int, details: str) -> RnnServeError:
    """Return the typed exception for a status code carried as a number in a message.

    StepMany reports each step's status that way. A number this gRPC version does not know
    gives a plain `RnnServeError` with code UNKNOWN; the number stays in the details.
    """
    code = _BY_NUMBER.get(number)
    if code is None:
        return RnnServeError(grpc.StatusCode.UNKNOWN, f"status code {number}: {details}")
    return from_status(code, details)


@contextmanager
def typed_errors() -> Iterator[None]:
    """Re-raise any `grpc.RpcError` escaping the block as its typed `RnnServeError`."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
