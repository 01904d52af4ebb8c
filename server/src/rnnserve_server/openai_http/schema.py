"""What the OpenAI-compatible front accepts and how it fails: the request body of
``POST /v1/completions`` (pydantic), and errors in OpenAI's JSON shape with their HTTP
status.
"""

from __future__ import annotations

import math
import re
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rnnserve_server.errors import NEVER, ServiceError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's completion request, plus rnnserve's stateful extension (session_id,
    keep_session). Fields OpenAI has and rnnserve does not honour are accepted only at
    their neutral value (``unsupported``)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[int] | list[str] | list[list[int]] = ""
    max_tokens: int | None = Field(default=None, ge=1)  # None: the model's, else 16
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(default=None, ge=0, lt=1 << 64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end user's name for the caller's own records: not used
    # accepted at the value that changes nothing
    n: int = 1
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # rnnserve: continue a session's state instead of resending the history
    session_id: str | None = None
    keep_session: bool = False

    def unsupported(self) -> tuple[str, str] | None:
        """(field, what rnnserve supports) for the first field set to what rnnserve does
        not do, else None."""
        checks = (
            ("n", self.n == 1, "1"),
            ("best_of", self.best_of in (None, 1), "1"),
            ("echo", not self.echo, "false"),
            ("logprobs", self.logprobs is None, "null"),
            ("suffix", self.suffix is None, "null"),
            ("presence_penalty", self.presence_penalty == 0, "0"),
            ("frequency_penalty", self.frequency_penalty == 0, "0"),
            ("logit_bias", not self.logit_bias, "null"),
        )
        return next(((name, allowed) for name, ok, allowed in checks if not ok), None)

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ApiError(Exception):
    """An error as the OpenAI API answers it: an HTTP status, ``{"error": {...}}`` and
    its headers (``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    @property
    def status_name(self) -> str:
        """The gRPC status name of the same failure (the metrics count calls by it)."""
        return STATUS_NAMES.get(self.status, "INTERNAL")

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


# The one error mapping, as HTTP: a server limit is 429 (the SDKs retry it, as they do
# 409 and 503), a bad field 400, an unknown model or session 404. A size limit, which no
# retry of the same request gets past, is 400 (as OpenAI answers a prompt too long).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}
ERROR_TYPES = {
    401: "authentication_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
_FIELD = re.compile(r"[a-z_]+")


def from_service_error(exc: ServiceError, *, code: str | None = None) -> ApiError:
    """A core error as the HTTP front answers it; ``param`` is the request field the
    message starts with, where it names one (the core names fields as OpenAI does:
    temperature, top_p, stop[0], prompt, max_tokens)."""
    found = _FIELD.match(exc.message)
    param = found.group(0) if found and found.group(0) in CompletionRequest.model_fields else None
    status = HTTP_STATUS.get(exc.code, 500)
    wait = getattr(exc, "retry_after_s", None)
    headers = None
    if wait == NEVER:
        status = 400
    elif wait is not None:  # what the SDKs read: OpenAI's retry-after-ms, then Retry-After
        headers = {
            "Retry-After": str(math.ceil(wait)),
            "retry-after-ms": str(math.ceil(wait * 1000)),
        }
    return ApiError(status, exc.message, param=param, code=code, headers=headers)


def from_validation_error(exc: ValidationError) -> ApiError:
    """pydantic's first complaint about a body, as OpenAI words it."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {where}", param=where)
    if error["type"] == "missing":
        return ApiError(400, f"you must provide a {where} parameter", param=where)
    return ApiError(400, f"{where}: {error['msg']}", param=where.split(".")[0] or None)
