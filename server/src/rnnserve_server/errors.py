"""The one error mapping of the service: each failure carries its gRPC status code.

Core code raises these; the servicer turns them into a status with the message as
details. Anything else that escapes is a bug: logged with its traceback, INTERNAL.
"""

from __future__ import annotations

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
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


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


def over_limit(what: str, value: int, limit: int, setting: str) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED naming the limit and the server setting that sets it."""
    return ResourceExhausted(f"{what} = {value} exceeds the server's limit of {limit} ({setting})")
