"""Optional bearer-token authentication, as a gRPC server interceptor.

Tokens come from the setting ``auth_tokens`` (``name:token`` pairs, comma-separated,
e.g. from the variable RNNSERVE_AUTH_TOKENS) and/or the file ``auth_tokens_file`` (one
``name:token`` per line; ``#`` starts a comment). A call must carry the metadata
``authorization: Bearer <token>``; its caller is then that token's name, which owns the
sessions it creates: another caller's session id answers NOT_FOUND, exactly like an
unknown one. Every method except the health service answers UNAUTHENTICATED without a
valid token; each refusal is counted (rnnserve_auth_failures_total{reason}) and logged,
rate-limited, without what was presented. With no tokens configured, authentication is
off and the caller is the peer's IP address.

The calls that change what the server serves (ReloadModels, LoadModel, UnloadModel, and
the KServe front's RepositoryModelLoad and RepositoryModelUnload) need more: with
authentication on, only the callers the setting ``auth_admins`` names may make them; any
other caller gets PERMISSION_DENIED.
"""

from __future__ import annotations

import contextvars
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from rnnserve_server.throttledlog import ThrottledLog

log = logging.getLogger(__name__)
CURRENT_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rnnserve_caller", default=None
)
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_METHODS = frozenset(
    [
        *(f"/rnnserve.v1.RnnServe/{name}" for name in ("ReloadModels", "LoadModel", "UnloadModel")),
        *(
            f"/inference.GRPCInferenceService/{name}"
            for name in ("RepositoryModelLoad", "RepositoryModelUnload")
        ),
    ]
)
MIN_TOKEN_LENGTH = 8
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


def load_tokens(inline: str, file: str) -> dict[str, str]:
    """token -> caller name, from the inline setting and the file.

    A malformed entry is a ValueError naming the entry (its number, or the file and
    line, and its caller name), never showing a token or a line of the file.
    """
    entries: list[tuple[str, str]] = []
    for n, item in enumerate(filter(None, (i.strip() for i in inline.split(",")))):
        entries.append((f"auth_tokens entry {n + 1}", item))
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"auth_tokens_file = {file!r}: cannot read it: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:  # its message would quote the file's bytes
            raise ValueError(f"auth_tokens_file = {file!r}: not UTF-8 text") from None
        for n, raw in enumerate(text.splitlines()):
            line = raw.split("#", 1)[0].strip()
            if line:
                entries.append((f"auth_tokens_file {file}:{n + 1}", line))
    tokens: dict[str, str] = {}
    for where, item in entries:
        name, sep, token = (part.strip() for part in item.partition(":"))
        if not sep or not name:
            raise ValueError(f"{where}: expected name:token (a caller name, ':', its token)")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"{where} (caller {name!r}): the token is shorter than "
                f"{MIN_TOKEN_LENGTH} characters"
            )
        if token in tokens:
            raise ValueError(
                f"{where} (caller {name!r}): the same token is already given to {tokens[token]!r}"
            )
        tokens[token] = name
    return tokens


def admins_of(setting: str, tokens: dict[str, str]) -> frozenset[str]:
    """The admin callers the setting auth_admins names; ValueError for a name no token
    has (a typo would lock every admin out) or admins without authentication."""
    admins = frozenset(filter(None, (name.strip() for name in setting.split(","))))
    if admins and not tokens:
        raise ValueError("auth_admins: names admins, but authentication is off (no auth_tokens)")
    callers = set(tokens.values())
    unknown = sorted(admins - callers)
    if unknown:
        raise ValueError(
            f"auth_admins: {', '.join(map(repr, unknown))} has no token; "
            f"the callers are {', '.join(map(repr, sorted(callers)))}"
        )
    return admins


# Why a call was refused (the label of rnnserve_auth_failures_total).
NO_TOKEN, NOT_BEARER, UNKNOWN_TOKEN = "no token", "not a bearer token", "unknown token"
REFUSAL_REASONS = (NO_TOKEN, NOT_BEARER, UNKNOWN_TOKEN)


def authenticated(tokens: dict[str, str], authorization: str) -> tuple[str | None, str]:
    """The caller an ``authorization`` value ("Bearer <token>") names, or None and why
    not (one of REFUSAL_REASONS). Every front (gRPC metadata, HTTP headers)
    authenticates through this one check."""
    if not authorization:
        return None, NO_TOKEN
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None, NOT_BEARER
    found = None
    for token, name in tokens.items():  # compare every one: constant time
        if hmac.compare_digest(token.encode(), presented.strip().encode()):
            found = name
    return (found, "") if found is not None else (None, UNKNOWN_TOKEN)


class Refusals:
    """What a front does with a refused call: counts it (``on_refused``, with its
    reason) and logs it, at most a few lines per reason every 10 s, with the call and
    the peer but never what the caller presented."""

    def __init__(self, on_refused: Callable[[str], None] | None = None) -> None:
        self._on_refused = on_refused
        self._log = ThrottledLog(log)

    def __call__(self, call: str, peer: str, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)
        self._log.log(
            logging.WARNING, reason, "refused a call to %s from %s: %s", call, peer, reason
        )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without a valid token (each one told to ``refusals``) and admin
    calls of other callers; ``counted(method, code)`` hears of every refusal (the
    metrics count them)."""

    def __init__(
        self,
        tokens: dict[str, str],
        admins: frozenset[str] = frozenset(),
        refusals: Refusals | None = None,
        counted: Callable[[str, str], None] | None = None,
    ) -> None:
        self._tokens = tokens
        self._admins = admins
        self._refusals = refusals or Refusals()
        self._counted = counted

    def _refusal(
        self,
        handler: Handler,
        method: str,
        code: grpc.StatusCode,
        message: str,
        refused: Callable[[str], None] | None = None,
    ) -> Handler:
        """A refusal of the call, counted by method and code; ``refused(peer)`` is told
        of it as it runs (unauthenticated calls: counted by reason, logged throttled)."""
        if self._counted is not None:
            self._counted(method.rsplit("/", 1)[-1], code.name)
        return _refusal(handler, code, message, refused)

    def _caller(self, metadata: Any) -> tuple[str | None, str]:
        """The caller's name, or None and why not."""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                return authenticated(self._tokens, value)
        return None, NO_TOKEN

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        caller, reason = self._caller(details.invocation_metadata)
        if caller is None:
            refused = functools.partial(self._refusals, details.method, reason=reason)
            return self._refusal(
                handler,
                details.method,
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid 'authorization: Bearer <token>' metadata entry is required",
                refused,
            )
        if details.method in ADMIN_METHODS and caller not in self._admins:
            log.info("%s -> PERMISSION_DENIED: %r is not an admin", details.method, caller)
            return self._refusal(
                handler,
                details.method,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{details.method.rsplit('/', 1)[-1]} changes what the server serves: only "
                f"the callers the setting auth_admins names may call it, and {caller!r} "
                "is not one",
            )
        return _with_caller(handler, caller)


def _refusal(
    handler: Handler,
    code: grpc.StatusCode,
    message: str,
    refused: Callable[[str], None] | None = None,
) -> Handler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if refused is not None:
            refused(context.peer())
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse(request, context)
        yield  # pragma: no cover - abort raises first

    return _replace_behaviour(handler, refuse, refuse_stream)


def _with_caller(handler: Handler, caller: str) -> Handler:
    def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: Any) -> Any:
            CURRENT_CALLER.set(caller)
            return await behaviour(request, context)

        return run

    def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: Any) -> Any:
            CURRENT_CALLER.set(caller)
            async for item in behaviour(request, context):
                yield item

        return run

    return _wrap(handler, unary, streaming)


def _replace_behaviour(
    handler: Handler, unary: Callable[..., Any], stream: Callable[..., Any]
) -> Handler:
    return _wrap(handler, lambda _b: unary, lambda _b: stream)


def _wrap(
    handler: Handler,
    unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    streaming: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> Handler:
    """The same handler kind with its behaviour wrapped (unary or streaming response)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)
