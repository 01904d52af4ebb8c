"""The OpenAI-compatible HTTP front: ``POST /v1/completions`` (streamed as server-sent
events on request), ``GET /v1/models`` and ``GET /v1/models/{model}``, on Starlette,
served by uvicorn on the gRPC server's own event loop (``HttpFront``), over the same
engine, sessions, authentication tokens, per-caller budgets and metrics.

Every request passes ``Front.admitted`` first, as a gRPC call passes the token
interceptor and ``rpc.guarded``: its caller is identified (a refused token counted and
logged), counted against ``max_calls_per_caller`` until its response has been sent in
full, and its tokens taken from that caller's budget; a refusal is answered by the
route, counted under its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rnnserve_server import calls, tracing
from rnnserve_server.auth import Refusals, authenticated
from rnnserve_server.config import ServerConfig
from rnnserve_server.engine import Engine
from rnnserve_server.errors import NotFound, ServiceError, Unavailable
from rnnserve_server.limits import CURRENT
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
STOP_FLUSH_S = 1  # whole seconds (uvicorn's): at the end of a shutdown, for the last answers

COMPLETIONS, MODELS = "/v1/completions", "/v1/models"
# What admitted() leaves in a request's scope for its route: the caller, or the refusal.
CALLER, REFUSAL = "rnnserve_caller", "rnnserve_refusal"
SHUTTING_DOWN = "the server is shutting down; retry the request (on another replica)"
T = TypeVar("T")


@dataclass(frozen=True)
class Began:
    """A call's start: when (perf_counter), and its span (None while tracing is off)."""

    at: float
    span: Any


class Front:
    """The routes, over one engine; ``tokens`` as the gRPC interceptor has them, and
    ``refusals`` counts and logs refused tokens as it does for gRPC."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics | None,
        tokens: dict[str, str],
        refusals: Refusals | None = None,
    ) -> None:
        self.engine, self.metrics, self.tokens = engine, metrics, tokens
        self.refusals = refusals or Refusals()
        self.stopping = False  # set when the grace period ends: calls end with 503
        self.calls: set[asyncio.Task[Any]] = set()  # requests in flight

    def app(self) -> ASGIApp:
        return self.admitted(self.routes())

    def routes(self) -> Starlette:
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

    def admitted(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the admission of every HTTP request (the module's docstring)."""

        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            try:
                if self.stopping:
                    raise Unavailable(SHUTTING_DOWN)
                caller = self.identify(scope)
                budget = self.engine.limits.admit(caller)
            except (ApiError, ServiceError) as exc:
                state[REFUSAL] = exc
                await app(scope, receive, send)
                return
            state[CALLER] = caller
            task = asyncio.current_task()
            assert task is not None  # uvicorn runs each request in a task of its own
            self.calls.add(task)
            reset = CURRENT.set(budget)
            try:
                await app(scope, receive, send)
            finally:
                CURRENT.reset(reset)
                self.engine.limits.release(budget)
                self.calls.discard(task)

        return admit

    def identify(self, scope: Scope) -> str:
        """As rpc.caller_of: the token's name, else the peer's IP address; 401 (counted
        and logged) for a missing or unknown token."""
        host, port = scope.get("client") or ("", 0)
        if self.tokens:
            authorization = Headers(scope=scope).get("authorization", "")
            name, reason = authenticated(self.tokens, authorization)
            if name is None:
                self.refusals(f"{scope['method']} {scope['path']}", f"{host}:{port}", reason)
                raise ApiError(
                    401,
                    "a valid 'Authorization: Bearer <token>' header is required",
                    code="invalid_api_key",
                )
            return "user:" + name
        return "ip:" + (f"[{host}]" if ":" in host else host)

    @staticmethod
    def caller(request: Request) -> str:
        """The request's caller, or its refusal raised (``admitted``)."""
        refusal = request.scope["state"].get(REFUSAL)
        if refusal is not None:
            raise refusal
        return str(request.scope["state"][CALLER])

    async def until_stopped(self, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """``items`` until the server stops (``end_calls``): then UNAVAILABLE, after the
        last item sent and before the next is asked for, so that a generation keeps
        exactly the tokens delivered."""
        async with contextlib.aclosing(items):
            while not self.stopping:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                yield item
            raise Unavailable(SHUTTING_DOWN)

    async def end_calls(self, wait_s: float) -> None:
        """The grace period is over: new requests are answered 503 and every request in
        flight ends at its next piece of text (a stream with an error event, whole
        answers with 503); waits up to ``wait_s`` for them."""
        self.stopping = True
        if self.calls:
            await asyncio.wait(list(self.calls), timeout=wait_s)

    @staticmethod
    def begin(path: str, request: Request) -> Began:
        """A call starts: its record for logs (calls.begin; x-request-id names it), its
        span (continuing the caller's traceparent header)."""
        headers = request.headers.items()
        calls.begin(path, None, headers)
        return Began(time.perf_counter(), tracing.http_span(request.method, path, headers))

    def observe(
        self, path: str, code: str, began: Began, model: Model | None = None, status: int = 200
    ) -> None:
        """A call ends with the gRPC status name ``code`` (the metrics count by it) and
        the HTTP ``status`` it answered (a stream's error after its start: still 200)."""
        if self.metrics is not None:
            label = f"{model.name}/{model.version}" if model is not None else ""
            self.metrics.observe(path, code, label, time.perf_counter() - began.at)
        tracing.end_http_span(began.span, status, code)

    def failed(self, path: str, exc: ApiError | ServiceError, began: Began) -> ApiError:
        """A failed call logged and counted (by its status's gRPC name), as OpenAI's JSON."""
        if isinstance(exc, ServiceError):
            error, code = from_service_error(exc), exc.code.name
        else:
            error, code = exc, exc.status_name
        if error.status != 401:  # a refused token is logged by ``refusals``, throttled
            log.info("%s -> %s: %s", path, code, error.message)
        self.observe(path, code, began, status=error.status)
        return error

    async def body(self, request: Request) -> CompletionRequest:
        """The body, read only up to max_request_bytes (parsing it holds the event loop)."""
        limit = self.engine.config.max_request_bytes
        too_large = ApiError(413, f"the request body exceeds {limit} bytes (max_request_bytes)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise too_large
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
        if isinstance(exc, ConnectionError):  # a socket the call needed: not a bug
            message = f"a connection this request needed failed ({exc!r}); retry the request"
            return self.error(ApiError(503, message))
        log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
        return self.error(ApiError(500, f"internal error in {request.url.path}; see server log"))

    @staticmethod
    def error(exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    # ------------------------------------------------------------------ routes

    async def models(self, request: Request) -> Response:
        began = self.begin(MODELS, request)
        try:
            self.caller(request)
        except (ApiError, ServiceError) as exc:
            raise self.failed(MODELS, exc, began) from None
        repository = self.engine.repository
        served = []  # each model's default version: what a request naming the model gets
        for name in sorted({m.name for m in repository.list() if is_language_model(m)}):
            with contextlib.suppress(NotFound):  # its pinned default is not loaded
                served.append(self.described(repository.get(name)))
        self.observe(MODELS, "OK", began)
        return JSONResponse({"object": "list", "data": served})

    async def model(self, request: Request) -> Response:
        began = self.begin(MODELS, request)
        try:
            self.caller(request)
            found = language_model(self.engine.repository, request.path_params["model"])
        except (ApiError, ServiceError) as exc:
            raise self.failed(MODELS, exc, began) from None
        self.observe(MODELS, "OK", began, found)
        return JSONResponse(self.described(found))

    @staticmethod
    def described(model: Model) -> dict[str, Any]:
        created = int(model.package.path.stat().st_mtime)
        return {"id": model.name, "object": "model", "created": created, "owned_by": "rnnserve"}

    async def completions(self, request: Request) -> Response:
        began = self.begin(COMPLETIONS, request)
        try:
            owner = self.caller(request)
            body = await self.body(request)
            completion = await Completion.open(self.engine, body, owner)
            calls.bind(session=completion.session.id, model=completion.model)
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
                left = asyncio.Event()
                return EventSourceResponse(
                    self.chunks(completion, head, usage, began, left),
                    sep="\n",
                    client_close_handler_callable=functools.partial(self.client_left, left),
                    background=BackgroundTask(completion.close),  # also if it never began
                )
            async with contextlib.aclosing(self.until_stopped(completion.pieces())) as generated:
                pieces = [piece async for piece in generated]
        except (ApiError, ServiceError) as exc:
            raise self.failed(COMPLETIONS, exc, began) from None
        self.observe(COMPLETIONS, "OK", began, completion.model)
        text = "".join(text for text, _ in pieces)
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": pieces[-1][1]}
        return JSONResponse({**head, "choices": [choice], "usage": completion.usage})

    @staticmethod
    async def client_left(left: asyncio.Event, _message: object) -> None:
        left.set()

    async def chunks(
        self,
        completion: Completion,
        head: dict[str, Any],
        usage: bool,
        began: Began,
        left: asyncio.Event,
    ) -> AsyncIterator[dict[str, str]]:
        """The server-sent events of a streamed completion, ``data: [DONE]`` last; an error
        after the first event is sent as an event of its own (as OpenAI does).

        It ends at the first piece after ``left`` is set (sse-starlette saw the client
        disconnect), not only when that cancels it: the cancellation of sse-starlette's
        task group is delivered only while this task waits on a pending future, which a
        generation whose chunks run inline can miss all the way to its last token."""
        extra = {"usage": None} if usage else {}
        code = "OK"
        try:
            async with contextlib.aclosing(self.until_stopped(completion.pieces())) as pieces:
                async for text, finish in pieces:
                    if left.is_set():
                        raise ClientLeft
                    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                    yield {"data": json.dumps({**head, "choices": [choice], **extra})}
            if usage:
                yield {"data": json.dumps({**head, "choices": [], "usage": completion.usage})}
            yield {"data": "[DONE]"}
        except ServiceError as exc:
            code = exc.code.name
            log.info("%s -> %s: %s (after the stream began)", COMPLETIONS, code, exc.message)
            yield {"data": json.dumps(from_service_error(exc).body())}
        except (asyncio.CancelledError, GeneratorExit, ClientLeft) as exc:
            code = "CANCELLED"
            self.engine.stats.cancel(COMPLETIONS)
            if not isinstance(exc, ClientLeft):
                raise
        finally:
            self.observe(COMPLETIONS, code, began, completion.model)


class ClientLeft(Exception):
    """The client of a streamed completion disconnected."""


class _OnTheRunningLoop(uvicorn.Server):
    """uvicorn on the gRPC server's event loop: the process's own signal handlers stop
    both (app.serve), so this one installs none."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpFront:
    """The HTTP front, started on the running event loop; ``port`` is where it listens."""

    def __init__(
        self, server: uvicorn.Server, task: asyncio.Task[None], port: int, front: Front
    ) -> None:
        self.server, self.task, self.port, self.front = server, task, port, front

    @classmethod
    async def start(
        cls,
        config: ServerConfig,
        engine: Engine,
        metrics: Metrics | None,
        tokens: dict[str, str],
        refusals: Refusals | None = None,
    ) -> HttpFront:
        host = (config.openai_host or config.host).strip("[]")
        try:  # bound here, so that the port (0: any) is known and a busy one fails now
            sock = socket.create_server(
                (host, config.openai_port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{config.openai_port}: {exc}") from None
        front = Front(engine, metrics, tokens, refusals)
        server = _OnTheRunningLoop(
            uvicorn.Config(
                front.app(),
                lifespan="off",
                log_config=None,
                access_log=False,
                # After the grace period and end_calls: for the last answers to go out.
                timeout_graceful_shutdown=STOP_FLUSH_S,
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
        return cls(server, task, sock.getsockname()[1], front)

    async def end_calls(self, wait_s: float) -> None:
        await self.front.end_calls(wait_s)

    async def stop(self) -> None:
        """Stop listening; a request still in flight (after ``end_calls``) is cut off."""
        self.server.should_exit = True
        await self.task
