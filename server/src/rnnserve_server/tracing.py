"""Optional OpenTelemetry tracing of each call through the engine and the batcher.

Off unless the setting ``tracing`` is on (it needs ``pip install 'rnnserve-server[otel]'``);
everything here is then a no-op that costs a ``None`` check. When on, the standard
``OTEL_*`` variables configure it, as any OpenTelemetry SDK does: ``OTEL_TRACES_EXPORTER``
(``otlp``, the default, ``otlp_proto_grpc``, ``otlp_proto_http``, ``console``, ``none``,
several comma-separated), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._PROTOCOL`` and the
other exporter variables, ``OTEL_SERVICE_NAME`` (default ``rnnserve``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, and
``OTEL_PROPAGATORS`` for the trace context a caller sends (W3C ``traceparent``).

The spans: one SERVER span per call (``rnnserve.v1.RnnServe/<Method>``,
``inference.GRPCInferenceService/<Method>``, or the HTTP front's ``POST /v1/completions``,
a child of the caller's trace context), with the request id, session and model; inside it
``rnnserve.feed`` (tokens fed to a session: through the batcher, or a whole prompt in
one run) and ``rnnserve.decode`` (a generation's tokens); and one ``rnnserve.batch.run``
span per run of a step graph or a generation graph, linked to the spans of every call it
served.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from rnnserve_server import calls

_EXPORTERS_GROUP = "opentelemetry_traces_exporter"


class _State:
    """The SDK's tracer provider and tracer while tracing is on (one per process)."""

    provider: Any = None
    tracer: Any = None


_on = _State()
_NO_SPAN = contextlib.nullcontext()  # reusable: it holds no state


class TracingUnavailable(ValueError):
    """Tracing was asked for but cannot start (the SDK is missing, an unknown exporter)."""


def _exporters() -> list[Any]:
    """The span exporters OTEL_TRACES_EXPORTER names, found by the entry points the
    exporter packages register (as the SDK's own auto-configuration does)."""
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    available = {e.name: e for e in entry_points(group=_EXPORTERS_GROUP)}
    exporters = []
    otlp = "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"
    for name in (otlp if n == "otlp" else n for n in names if n and n != "none"):
        if name not in available:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER names {name!r}, which no installed package provides "
                f"(installed: {', '.join(sorted(available)) or 'none'}; the otel extra "
                "brings otlp_proto_grpc and console)"
            )
        exporters.append(available[name].load()())
    return exporters


def setup() -> None:
    """Start exporting traces (the setting tracing is on); TracingUnavailable if not
    possible. OTEL_SDK_DISABLED=true leaves tracing off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable(
            "tracing needs the OpenTelemetry SDK: pip install 'rnnserve-server[otel]'"
        ) from None
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": "rnnserve"})
    )
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _on.provider, _on.tracer = provider, provider.get_tracer("rnnserve_server")


def shutdown() -> None:
    """Export what is buffered, then stop."""
    if _on.provider is not None:
        _on.provider.shutdown()
    _on.provider = _on.tracer = None


def enabled() -> bool:
    return _on.tracer is not None


def server_span(
    service: str, method: str, metadata: Iterable[tuple[str, Any]] | None
) -> contextlib.AbstractContextManager[Any]:
    """The span of one gRPC call to ``service``, continuing the trace context the caller
    sent."""
    if _on.tracer is None:
        return _NO_SPAN
    return _server_span(
        f"{service}/{method}",
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        metadata,
    )


@contextlib.contextmanager
def _server_span(name: str, attributes: dict[str, str], carrier: Any) -> Iterator[Any]:
    from opentelemetry import trace

    with trace.use_span(_started(name, attributes, carrier), end_on_exit=True) as span:
        try:
            yield span
        finally:
            _name_the_call(span)


def http_span(method: str, route: str, headers: Iterable[tuple[str, str]]) -> Any:
    """The span of one HTTP request, made the current span for the rest of the request's
    task (a streamed answer outlives its handler, so no ``with`` can hold it);
    ``end_http_span`` ends it. None while tracing is off."""
    if _on.tracer is None:
        return None
    from opentelemetry import context, trace

    span = _started(
        f"{method} {route}", {"http.request.method": method, "http.route": route}, headers
    )
    context.attach(trace.set_span_in_context(span))  # the request's task ends with it
    return span


def end_http_span(span: Any, http_status: int, code: str) -> None:
    """End an ``http_span`` with the answer's HTTP status (``code``: the same outcome's
    gRPC status name, as the metrics count it)."""
    if span is None:
        return
    from opentelemetry import trace

    _name_the_call(span)
    span.set_attribute("http.response.status_code", http_status)
    if code not in ("OK", "CANCELLED"):
        span.set_status(trace.Status(trace.StatusCode.ERROR, code))
    span.end()


def _started(name: str, attributes: dict[str, str], carrier: Iterable[tuple[str, Any]]) -> Any:
    """A SERVER span, a child of the trace context the caller's metadata or headers carry."""
    from opentelemetry import propagate, trace

    parent = propagate.extract({k: v for k, v in carrier or () if isinstance(v, str)})
    return _on.tracer.start_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    )


def _name_the_call(span: Any) -> None:
    """The request id, session and model of the current call, on its span."""
    call = calls.current()
    if call is not None:
        span.set_attributes(
            {
                key: value
                for key, value in (
                    ("rnnserve.request_id", call.request_id),
                    ("rnnserve.session_id", call.session),
                    ("rnnserve.model", call.model),
                )
                if value
            }
        )


def status(code: str) -> None:
    """The gRPC status the current call ends with."""
    if _on.tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code)
    if code not in ("OK", "CANCELLED"):
        span.set_status(trace.Status(trace.StatusCode.ERROR, code))


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span inside the current call (a no-op while tracing is off)."""
    if _on.tracer is None:
        return _NO_SPAN
    return _on.tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]


def link() -> Any:
    """The current span's context, for a batch run to link to (None while off)."""
    if _on.tracer is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span().get_span_context()


def batch_run(model: str, rows: int, started: float, served: Iterable[Any]) -> None:
    """The span of one run of a step or generation graph that began at ``started``
    (perf_counter) and has just ended, linked to the calls whose steps it ran."""
    if _on.tracer is None:
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    began_ns = time.time_ns() - int((time.perf_counter() - started) * 1e9)
    links = [Link(context) for context in served if context is not None and context.is_valid]
    run = _on.tracer.start_span(  # a trace of its own: it serves many calls alike
        "rnnserve.batch.run",
        context=Context(),
        start_time=began_ns,
        links=links,
        attributes={"rnnserve.model": model, "rnnserve.batch.rows": rows},
    )
    run.end()
