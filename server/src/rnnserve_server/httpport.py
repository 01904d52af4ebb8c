"""The HTTP port beside gRPC (setting metrics_port): what load balancers, Kubernetes probes
and Prometheus ask over plain HTTP.

    GET /metrics   the Prometheus exposition of the server's registry
    GET /healthz   200 while the process serves HTTP at all (liveness)
    GET /readyz    200 "SERVING" while the gRPC health service reports the server as a
                   whole SERVING, else 503 with that status (readiness)

Every other path answers 404. The server runs in a thread of its own, so it answers
even while the event loop is busy.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

Respond = Callable[[str, list[tuple[str, str]]], Any]
PATHS = ("/metrics", "/healthz", "/readyz")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Every probe and scrape would be a log line; the metrics count the gRPC calls."""


def endpoints(
    registry: CollectorRegistry, health_status: Callable[[], str]
) -> Callable[[dict[str, Any], Respond], Iterable[bytes]]:
    """The WSGI application of the port; ``health_status`` gives the gRPC health
    service's overall status name (SERVING, NOT_SERVING)."""
    metrics = make_wsgi_app(registry)

    def text(respond: Respond, status: str, body: str) -> list[bytes]:
        data = body.encode()
        respond(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def app(environ: dict[str, Any], respond: Respond) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, respond)  # type: ignore[no-any-return]
        if path not in PATHS:
            return text(respond, "404 Not Found", f"not found; paths: {', '.join(PATHS)}\n")
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return text(respond, "405 Method Not Allowed", "use GET\n")
        if path == "/healthz":
            return text(respond, "200 OK", "alive\n")
        status = health_status()
        code = "200 OK" if status == "SERVING" else "503 Service Unavailable"
        return text(respond, code, f"{status}\n")

    return app


class HttpPort:
    """The port's HTTP server, running in a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health_status: Callable[[], str],
    ) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server_class = type("_FamilyServer", (_Server,), {"address_family": family})
        self._server: WSGIServer = make_server(
            str(address[0]),
            port,
            endpoints(registry, health_status),
            server_class,
            handler_class=_QuietHandler,
        )
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rnnserve-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
