"""The call being served, as logs, metrics and traces name it: its method, its request
id, and the session and model version it turned out to concern.

The gRPC layer begins a ``Call`` for each call it handles (``rpc.guarded``) and binds the
session and model once it knows them; everything the call's task runs, engine included,
sees it through ``current()``. The log filter of the entry point copies it into every
log record (JSON logs carry ``request_id``, ``session`` and ``model``); the request
metrics take their ``model`` label from it.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REQUEST_ID_METADATA = "x-request-id"
MAX_ID_LENGTH = 64


@dataclass
class Call:
    method: str
    request_id: str
    session: str = ""
    model: str = ""  # "name/version" once the call's model version is known


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "rnnserve_call", default=None
)


def current() -> Call | None:
    return _CURRENT.get()


def begin(method: str, request: Any, metadata: Iterable[tuple[str, Any]] | None) -> Call:
    """The call's record, for the rest of its task: its request id is the request's own
    ``request_id`` (Step, Generate), else the caller's ``x-request-id`` metadata, else a
    fresh one (so that a call's log lines can be found together); its session, the one
    the request names."""
    request_id = getattr(request, "request_id", "") or ""
    if not request_id:
        request_id = next((str(v) for k, v in metadata or () if k == REQUEST_ID_METADATA and v), "")
    session = getattr(request, "session_id", "")  # what it names, found or not
    call = Call(
        method,
        request_id[:MAX_ID_LENGTH] or secrets.token_hex(8),
        session=session[:MAX_ID_LENGTH] if isinstance(session, str) else "",
    )
    _CURRENT.set(call)
    return call


def bind(*, session: str = "", model: Any = None, request_id: str = "") -> None:
    """Name the session and the model version (a loaded Model) the current call uses,
    and its request id where the request carries one in a field of its own (KServe's
    ``id``, per request of a stream)."""
    call = _CURRENT.get()
    if call is None:
        return
    if request_id:
        call.request_id = request_id[:MAX_ID_LENGTH]
    if session:
        call.session = session
    if model is not None:
        call.model = f"{model.name}/{model.version}"


class CallFilter(logging.Filter):
    """Adds the current call's request id, method, session and model to log records
    (fields a record sets itself, with ``extra=``, win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = _CURRENT.get()
        if call is not None:
            for key, value in (
                ("request_id", call.request_id),
                ("method", call.method),
                ("session", call.session),
                ("model", call.model),
            ):
                if value and not hasattr(record, key):
                    setattr(record, key, value)
        return True
