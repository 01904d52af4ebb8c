"""What every gRPC front of the server shares: requests decoded leniently (a malformed
message is INVALID_ARGUMENT, not gRPC's UNKNOWN), the one error mapping from the core's
ServiceError to a status, the accounting of every call (metrics, cancellations), and who
the caller is.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError

from rnnserve_server import calls, tracing
from rnnserve_server.auth import CURRENT_CALLER
from rnnserve_server.engine import Engine
from rnnserve_server.errors import NEVER, InvalidArgument, ServiceError, Unavailable
from rnnserve_server.limits import CURRENT
from rnnserve_server.metrics import Metrics

log = logging.getLogger(__name__)


def caller_of(context: Any) -> str:
    """Who owns the sessions a call creates and counts against max_sessions_per_caller:
    the authenticated caller's name ("user:alice") when authentication is on, else the
    caller's IP address ("ip:127.0.0.1"; "ip:[::1]"; a Unix socket's peer)."""
    authenticated = CURRENT_CALLER.get()
    if authenticated is not None:
        return "user:" + authenticated
    peer = context.peer() or ""
    transport, _, address = peer.partition(":")
    if transport in ("ipv4", "ipv6"):
        address = address.rsplit(":", 1)[0]
    return "ip:" + address


class Malformed:
    """A request whose bytes are not a valid protobuf message of the method's type.

    The deserializer hands this to the handler instead of raising, so the caller gets
    INVALID_ARGUMENT (gRPC itself would answer UNKNOWN) and the server logs no traceback.
    """

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name, self.error = type_name, error


def parsed(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidArgument(f"request: not a valid {request.type_name} message ({request.error})")
    return request


def _decoder(message_class: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Malformed(message_class.DESCRIPTOR.full_name, str(exc))

    return decode


def generic_handler(servicer: Any, service: Any, messages: Any) -> grpc.GenericRpcHandler[Any, Any]:
    """Every method of ``service`` (a protobuf ServiceDescriptor) bound to the servicer's
    method of the same name, with lenient request decoding (Malformed); ``messages``
    is the generated module that holds the request and response classes."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {
        method.name: factories[(method.client_streaming, method.server_streaming)](
            getattr(servicer, method.name),
            request_deserializer=_decoder(getattr(messages, method.input_type.name)),
            response_serializer=getattr(messages, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


MAX_DETAILS = 1024  # status details travel as a trailer; gRPC caps metadata at ~8-16 KiB


def bounded_details(message: str) -> str:
    """Status details never echo unbounded input (a 10k-character id, say) back."""
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 1] + "…"


def _nothing() -> None:
    pass


SHUTTING_DOWN = "the server is shutting down; retry the call (on another replica)"
RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # gRFC A6: when to retry; negative: do not


def _pushback(error: ServiceError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a refusal that knows when a retry can succeed."""
    wait = getattr(error, "retry_after_s", None)
    if wait is None:
        return ()
    return ((RETRY_PUSHBACK, "-1" if wait == NEVER else str(math.ceil(wait * 1000))),)


class Accounted:
    """The base of a front's servicer: the engine it drives and the metrics it feeds;
    ``SERVICE``, the full name of the gRPC service it serves (its calls' spans say it)."""

    SERVICE: ClassVar[str]

    def __init__(self, engine: Engine, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self._calls: dict[asyncio.Task[Any], float] = {}  # in flight: when each began
        self._writing: set[asyncio.Task[Any]] = set()  # streams whose response gRPC sends
        self._stopping = False

    def _start(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._calls[task] = time.perf_counter()

    def _elapsed(self) -> float:
        task = asyncio.current_task()
        began = self._calls.pop(task, None) if task is not None else None
        return 0.0 if began is None else time.perf_counter() - began

    async def end_calls(self, wait_s: float) -> None:
        """The server stops: every call still in flight ends now, its handler unwound
        (a generation's session saved), with UNAVAILABLE saying why (its caller retries
        elsewhere) and counted as such, before the transport closes under it."""
        self._stopping = True
        calls = list(self._calls)
        for task in calls:
            # gRPC swallows a cancel that lands while it sends a stream's response (no
            # status goes out): such a stream stops after that send instead.
            if task not in self._writing:
                task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=wait_s)

    async def _stopped(self, method: str, context: Any) -> None:
        """A call cancelled by ``end_calls``: UNAVAILABLE (abort raises)."""
        self._done(method, "UNAVAILABLE")
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def _done(self, method: str, code: str) -> None:
        tracing.status(code)
        elapsed = self._elapsed()
        if self.metrics is not None:
            call = calls.current()
            self.metrics.observe(method, code, call.model if call else "", elapsed)

    def _admit(self, context: Any) -> Callable[[], None]:
        """Count the call against its caller's budget (RESOURCE_EXHAUSTED past
        max_calls_per_caller) and make that budget the call's own; the function that
        ends the count. The handler calls it as it ends, before its status goes out; the
        call's end calls it too, for a handler gRPC never resumed (calling it twice is
        calling it once)."""
        limits = self.engine.limits
        budget = limits.admit(caller_of(context))
        held = True

        def release(*_: Any) -> None:
            nonlocal held
            if held:
                held = False
                limits.release(budget)

        context.add_done_callback(release)
        CURRENT.set(budget)
        return release

    def _cancelled(self, method: str) -> None:
        self.engine.stats.cancel(method)
        self._done(method, "CANCELLED")


def guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Map ServiceError to its status, anything else to INTERNAL; count and time calls.

    Works for unary handlers (coroutines) and streaming ones (async generators).
    """
    method = handler.__name__
    streaming = inspect.isasyncgenfunction(handler)

    async def fail(self: Accounted, context: Any, exc: BaseException) -> None:
        if isinstance(exc, ConnectionError):  # a socket the call needed: not a bug
            exc = Unavailable(f"a connection this call needed failed ({exc!r}); retry the call")
        if isinstance(exc, ServiceError):
            log.info("%s -> %s: %s", method, exc.code.name, exc.message)
            self._done(method, exc.code.name)
            await context.abort(exc.code, bounded_details(exc.message), _pushback(exc))
        log.error("%s failed unexpectedly", method, exc_info=exc)
        self._done(method, "INTERNAL")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see server log")

    if streaming:

        @functools.wraps(handler)
        async def stream_wrapper(self: Accounted, request: Any, context: Any) -> Any:
            self._start()
            metadata = context.invocation_metadata()
            calls.begin(method, request, metadata)
            with tracing.server_span(self.SERVICE, method, metadata):
                release = _nothing
                try:
                    parsed(request)
                    release = self._admit(context)
                    task = asyncio.current_task()
                    assert task is not None  # every call is a task of its own
                    async for item in handler(self, request, context):
                        self._writing.add(task)
                        try:
                            yield item
                        finally:
                            self._writing.discard(task)
                        if self._stopping:
                            await self._stopped(method, context)
                except asyncio.CancelledError:
                    if self._stopping:
                        await self._stopped(method, context)
                    self._cancelled(method)
                    raise
                except GeneratorExit:
                    # A cancel that lands while gRPC writes a response closes the generator
                    # at its yield instead of cancelling the task: counted as cancelled too.
                    self._cancelled(method)
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(self, context, exc)
                else:
                    self._done(method, "OK")
                finally:
                    release()

        return stream_wrapper

    @functools.wraps(handler)
    async def unary_wrapper(self: Accounted, request: Any, context: Any) -> Any:
        self._start()
        metadata = context.invocation_metadata()
        calls.begin(method, request, metadata)
        with tracing.server_span(self.SERVICE, method, metadata):
            release = _nothing
            try:
                release = self._admit(context)
                reply = await handler(self, parsed(request), context)
            except asyncio.CancelledError:
                if self._stopping:
                    await self._stopped(method, context)
                self._cancelled(method)
                raise
            except Exception as exc:
                await fail(self, context, exc)
                raise  # unreachable: abort raises
            finally:
                release()
            self._done(method, "OK")
            return reply

    return unary_wrapper
