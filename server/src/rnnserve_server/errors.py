"""The one error mapping of the service: each failure carries its gRPC status code.

Core code raises these; the servicer turns them into a status with the message as
details. Anything else that escapes is a bug: logged with its traceback, INTERNAL.
"""

from __future__ import annotations

import math
from typing import Any

import grpc


class ServiceError(Exception):
    """A failure that the caller should see with a specific status code."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    """A limit was reached. ``retry_after_s`` says when a retry can succeed: a delay in
    seconds, ``NEVER`` (the same request fails again: it is over a size limit), or None
    (not known: the message says what frees room)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


NEVER = math.inf  # a retry_after_s: retrying the same request cannot succeed


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    """Stored data (a shared session record) that fails its check: changed in the
    store, or written by a replica with other state keys."""

    code = grpc.StatusCode.DATA_LOSS


def shown(value: Any, limit: int = 80) -> str:
    """A value as messages quote it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def out_of_range(field: str, value: Any, allowed: str) -> InvalidArgument:
    """INVALID_ARGUMENT naming the field, the value and the allowed range."""
    return InvalidArgument(f"{field} = {shown(value)} is out of range; allowed: {allowed}")


def over_limit(
    what: str, value: int, limit: int, setting: str, *, retry_after_s: float | None = NEVER
) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED naming the limit and the server setting that sets it; by
    default a size limit, which no retry of the same request gets past."""
    return ResourceExhausted(
        f"{what} = {value} exceeds the server's limit of {limit} ({setting})", retry_after_s
    )


def too_many_sessions(count: int, limit: int, *, per_caller: bool) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a session limit (max_sessions, max_sessions_per_caller):
    room comes back when a session closes or expires, which no delay can promise."""
    what, setting = (
        ("open sessions of this caller", "max_sessions_per_caller")
        if per_caller
        else ("open sessions", "max_sessions")
    )
    return ResourceExhausted(
        f"{what} = {count} exceeds the server's limit of {limit} ({setting}); retry "
        "once a session has been closed (CloseSession) or has expired",
        retry_after_s=None,
    )
