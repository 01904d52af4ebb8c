"""Typed exceptions for failed rnnserve calls.

Every `grpc.RpcError` the client sees is re-raised as one `RnnServeError` subclass chosen by
its status code, so callers catch `rnnserve.NotFound` instead of inspecting gRPC internals.
The original gRPC exception is dropped from the chain (`raise ... from None`): its repr is a
wall of C-core debug text that hides the one line that matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class RnnServeError(Exception):
    """A call failed; `code` is the gRPC status code and `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(RnnServeError):
    """A field was out of range or malformed; the details name the field and the range."""


class NotFound(RnnServeError):
    """Unknown model, model version or session (closed and expired sessions are unknown)."""


class ResourceExhausted(RnnServeError):
    """A server limit was reached (sessions, tokens per request, generation length)."""


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
    `RnnServeError` that still carries the code.
    """
    # A bare grpc.RpcError() carries no status; the ones raised by calls always do.
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    return from_status(code, (details_of() if callable(details_of) else None) or "")


def from_status(code: grpc.StatusCode, details: str) -> RnnServeError:
    """Return the typed exception for a status code and its details."""
    return _BY_CODE.get(code, RnnServeError)(code, details)


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
