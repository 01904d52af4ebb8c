"""The OpenAI-compatible HTTP front: ``POST /v1/completions`` (streamed as server-sent
events on request), ``GET /v1/models`` and ``GET /v1/models/{model}``, on Starlette,
served by uvicorn on the gRPC server's own event loop (``HttpFront``), over the same
engine, sessions, authentication tokens and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rnnserve_server.auth import bearer_caller
from rnnserve_server.config import ServerConfig
from rnnserve_server.engine import Engine
from rnnserve_server.errors import ServiceError
from rnnserve_server.metrics import Metrics
from rnnserve_server.openai_http.completions import Completion, is_language_model, language_model
from rnnserve_server.openai_http.schema import (
    ApiError,
    CompletionRequest,
    from_service_error,
    from_validation_error,
)
from rnnserve_server.repository import Model

log = logging.getLogger(__name__)

COMPLETIONS, MODELS = "/v1/completions", "/v1/models"


class Front:
    """The routes, over one engine; ``tokens`` as the gRPC interceptor has them."""

    def __init__(self, engine: Engine, metrics: Metrics | None, tokens: dict[str, str]) -> None:
        self.engine, self.metrics, self.tokens = engine, metrics, tokens

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(COMPLETIONS, self.completions, methods=["POST"]),
                Route(MODELS, self.models, methods=["GET"]),
                Route(MODELS + "/{model:path}", self.model, methods=["GET"]),
            ],
            exception_handlers={
                ApiError: self.api_error,
                HTTPException: self.http_error,
                Exception: self.unexpected,
            },
        )

    # ------------------------------------------------------------------ plumbing

    def caller(self, request: Request) -> str:
        """As rpc.caller_of: the token's name, else the peer's IP address."""
        if self.tokens:
            name = bearer_caller(self.tokens, request.headers.get("authorization", ""))
            if name is None:
                raise ApiError(
                    401,
                    "a valid 'Authorization: Bearer <token>' header is required",
                    code="invalid_api_key",
                )
            return "user:" + name
        host = request.client.host if request.client else ""
        return "ip:" + (f"[{host}]" if ":" in host else host)

    def observe(self, path: str, code: str, began: float) -> None:
        if self.metrics is not None:
            self.metrics.observe(path, code, time.perf_counter() - began)

    def failed(self, path: str, exc: ApiError | ServiceError, began: float) -> ApiError:
        """A failed call counted (by its status's gRPC name), as OpenAI's JSON."""
        if isinstance(exc, ServiceError):
            self.observe(path, exc.code.name, began)
            return from_service_error(exc)
        self.observe(path, exc.status_name, began)
        return exc

    async def body(self, request: Request) -> CompletionRequest:
        limit = self.engine.config.max_message_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body exceeds {limit} bytes (max_message_bytes)")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"the request body exceeds {limit} bytes (max_message_bytes)")
        try:
            return CompletionRequest.model_validate_json(data or b"{}")
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    async def api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return self.error(exc)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"Invalid URL ({request.method} {request.url.path})"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return self.error(ApiError(exc.status_code, message))

    async def unexpected(self, request: Request, exc: Exception) -> Response:
        log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
        return self.error(ApiError(500, f"internal error in {request.url.path}; see server log"))

    @staticmethod
    def error(exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    # ------------------------------------------------------------------ routes

    async def models(self, request: Request) -> Response:
        began = time.perf_counter()
        try:
            self.caller(request)
        except ApiError as exc:
            raise self.failed(MODELS, exc, began) from None
        latest = {m.name: m for m in self.engine.repository.list() if is_language_model(m)}
        self.observe(MODELS, "OK", began)
        return JSONResponse(
            {"object": "list", "data": [self.described(m) for m in latest.values()]}
        )

    async def model(self, request: Request) -> Response:
        began = time.perf_counter()
        try:
            self.caller(request)
            found = language_model(self.engine.repository, request.path_params["model"])
        except ApiError as exc:
            raise self.failed(MODELS, exc, began) from None
        self.observe(MODELS, "OK", began)
        return JSONResponse(self.described(found))

    @staticmethod
    def described(model: Model) -> dict[str, Any]:
        created = int(model.package.path.stat().st_mtime)
        return {"id": model.name, "object": "model", "created": created, "owned_by": "rnnserve"}

    async def completions(self, request: Request) -> Response:
        began = time.perf_counter()
        try:
            owner = self.caller(request)
            body = await self.body(request)
            completion = await Completion.open(self.engine, body, owner)
            head = {
                "id": "cmpl-" + secrets.token_hex(12),
                "object": "text_completion",
                "created": int(time.time()),
                "model": completion.model.name,
            }
            if body.session_id or body.keep_session:
                head["session_id"] = completion.session.id
            if body.stream:  # counted when the stream ends
                usage = body.stream_options is not None and body.stream_options.include_usage
                return EventSourceResponse(self.chunks(completion, head, usage, began), sep="\n")
            async with contextlib.aclosing(completion.pieces()) as generated:
                pieces = [piece async for piece in generated]
        except (ApiError, ServiceError) as exc:
            raise self.failed(COMPLETIONS, exc, began) from None
        self.observe(COMPLETIONS, "OK", began)
        text = "".join(text for text, _ in pieces)
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": pieces[-1][1]}
        return JSONResponse({**head, "choices": [choice], "usage": completion.usage})

    async def chunks(
        self, completion: Completion, head: dict[str, Any], usage: bool, began: float
    ) -> AsyncIterator[dict[str, str]]:
        """The server-sent events of a streamed completion, ``data: [DONE]`` last; an error
        after the first event is sent as an event of its own (as OpenAI does)."""
        extra = {"usage": None} if usage else {}
        code = "OK"
        try:
            async with contextlib.aclosing(completion.pieces()) as pieces:
                async for text, finish in pieces:
                    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                    yield {"data": json.dumps({**head, "choices": [choice], **extra})}
            if usage:
                yield {"data": json.dumps({**head, "choices": [], "usage": completion.usage})}
            yield {"data": "[DONE]"}
        except ServiceError as exc:
            code = exc.code.name
            yield {"data": json.dumps(from_service_error(exc).body())}
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            self.engine.stats.cancel(COMPLETIONS)
            raise
        finally:
            self.observe(COMPLETIONS, code, began)


class _OnTheRunningLoop(uvicorn.Server):
    """uvicorn on the gRPC server's event loop: the process's own signal handlers stop
    both (app.serve), so this one installs none."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpFront:
    """The HTTP front, started on the running event loop; ``port`` is where it listens."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], port: int) -> None:
        self.server, self.task, self.port = server, task, port

    @classmethod
    async def start(
        cls, config: ServerConfig, engine: Engine, metrics: Metrics | None, tokens: dict[str, str]
    ) -> HttpFront:
        host = (config.openai_host or config.host).strip("[]")
        try:  # bound here, so that the port (0: any) is known and a busy one fails now
            sock = socket.create_server(
                (host, config.openai_port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{config.openai_port}: {exc}") from None
        server = _OnTheRunningLoop(
            uvicorn.Config(
                Front(engine, metrics, tokens).app(),
                lifespan="off",
                log_config=None,
                access_log=False,
                # whole seconds; at least 1, which waits only while requests are in flight
                timeout_graceful_shutdown=max(1, math.ceil(config.shutdown_grace_s)),
                ssl_certfile=config.tls_cert or None,
                ssl_keyfile=config.tls_key or None,
                ssl_ca_certs=config.tls_client_ca or None,
                ssl_cert_reqs=ssl.CERT_REQUIRED if config.tls_client_ca else ssl.CERT_NONE,
            )
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()  # its start-up error
                raise RuntimeError("the HTTP front stopped while starting")
            await asyncio.sleep(0.01)
        return cls(server, task, sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting requests; in-flight ones finish within the shutdown grace."""
        self.server.should_exit = True
        await self.task
