"""Entry point: configuration, logging, the gRPC server with health and reflection,
graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from rnnserve.v1 import rnnserve_pb2
from rnnserve_server import reflection, tracing
from rnnserve_server.auth import BearerTokenInterceptor, Refusals, admins_of, load_tokens
from rnnserve_server.calls import CallFilter
from rnnserve_server.config import ServerConfig, load_config
from rnnserve_server.engine import Engine
from rnnserve_server.errors import Unavailable
from rnnserve_server.kserve.service import SERVICE_NAME as KSERVE_SERVICE_NAME
from rnnserve_server.kserve.service import KServeServicer
from rnnserve_server.kserve.service import add_to_server as add_kserve_to_server
from rnnserve_server.metrics import Metrics
from rnnserve_server.modelconfig import ModelLimits
from rnnserve_server.openai_http.app import HttpFront
from rnnserve_server.repository import Repository
from rnnserve_server.rpc import Accounted
from rnnserve_server.runtime import ProviderChoice
from rnnserve_server.servicer import RnnServeServicer, add_to_server

log = logging.getLogger("rnnserve_server")

SERVICE_NAME = rnnserve_pb2.DESCRIPTOR.services_by_name["RnnServe"].full_name
EXPIRY_SWEEP_S = 1.0
STOP_FLUSH_S = 1.0  # at the end of a shutdown: for the last statuses to go out


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the call's request id and method and the session
    and model ids when a record has them (calls.CallFilter adds the current call's)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "method", "session", "model"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallFilter())
    if config.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


@dataclass
class RunningServer:
    """A started server: the gRPC server, its bound ports and the serving core."""

    server: grpc.aio.Server
    port: int
    engine: Engine
    health: HealthUpdater
    metrics: Metrics
    metrics_port: int | None
    _background: list[asyncio.Task[None]]
    servicers: list[Accounted]  # the gRPC fronts: rnnserve.v1, KServe v2
    http: HttpFront | None = None  # the OpenAI-compatible front, where openai_port is set

    async def stop(self, grace: float, interrupt: asyncio.Event | None = None) -> None:
        """Drain, then stop. For ``grace`` seconds (or until ``interrupt`` is set) the
        health service is served and reports NOT_SERVING (and /readyz fails), so that
        load balancers see it and send new calls elsewhere, while every call is still
        served; then the calls still in flight end with UNAVAILABLE (their callers retry
        elsewhere) and the server stops."""
        await self.health.shutdown()
        if grace > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for((interrupt or asyncio.Event()).wait(), grace)
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        fronts: list[Accounted | HttpFront] = [*self.servicers, *([self.http] if self.http else [])]
        await asyncio.gather(*(front.end_calls(STOP_FLUSH_S) for front in fronts))
        await asyncio.gather(
            self.server.stop(STOP_FLUSH_S), *([self.http.stop()] if self.http else [])
        )
        await self.engine.close()
        self.metrics.stop()


def model_health_name(name: str) -> str:
    """The health-service name of one model's readiness, e.g. rnnserve.v1.RnnServe/char-gru."""
    return f"{SERVICE_NAME}/{name}"


class HealthUpdater:
    """Keeps the health service in step with the repository: the server is SERVING while
    at least one model is loaded, and each model name is SERVING while a version of it is;
    everything is NOT_SERVING from the start of a shutdown on.

    ``status`` is the server's overall status as the health service reports it, for the
    HTTP /readyz (read from the HTTP port's thread).
    """

    def __init__(self, health: HealthServicer, engine: Engine) -> None:
        self.health = health
        self.engine = engine
        self.names: set[str] = set()
        self.status = "NOT_SERVING"
        self._stopping = False

    def __call__(self, _result: Any = None) -> None:
        asyncio.get_running_loop().create_task(self.update())

    async def update(self) -> None:
        if self._stopping:  # the health service keeps NOT_SERVING once shutting down
            return
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        names = {m.name for m in self.engine.repository.list()}
        for name in names | self.names:
            await self.health.set(
                model_health_name(name), serving if name in names else not_serving
            )
        self.names = names
        overall = serving if names else not_serving
        for service in ("", SERVICE_NAME):
            await self.health.set(service, overall)
        self.status = health_pb2.HealthCheckResponse.ServingStatus.Name(overall)

    async def shutdown(self) -> None:
        self._stopping = True
        self.status = "NOT_SERVING"
        await self.health.enter_graceful_shutdown()


async def create_server(config: ServerConfig) -> RunningServer:
    """Load the repository and start serving on config.host:config.port (0 = any free port)."""
    providers = ProviderChoice.resolve(
        config.provider,
        allow_cpu_fallback=config.allow_cpu_fallback,
        device_id=config.cuda_device_id,
        intra_op_threads=config.intra_op_threads,
        spinning=config.intra_op_spinning,
        sequence_threads=config.sequence_intra_op_threads,
    )
    repository = Repository.load(config.models, providers, ModelLimits.of(config))
    engine = Engine(config, repository)
    metrics = Metrics()
    metrics.watch(engine)

    tokens = load_tokens(config.auth_tokens, config.auth_tokens_file)
    admins = admins_of(config.auth_admins, tokens)
    refusals = Refusals(metrics.refused_authentication)  # every front's refused calls
    server = grpc.aio.server(
        interceptors=(
            [BearerTokenInterceptor(tokens, admins, refusals, metrics.refused)] if tokens else []
        ),
        options=[
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer, kserve = RnnServeServicer(engine, metrics), KServeServicer(engine, metrics)
    add_to_server(servicer, server)
    add_kserve_to_server(kserve, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(
        server,
        (
            SERVICE_NAME,
            KSERVE_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ),
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert:
        credentials = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
            root_certificates=(
                Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
            ),
            require_client_auth=bool(config.tls_client_ca),
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    log.info(
        "authentication %s, %s",
        f"on ({len(tokens)} tokens, admins: {', '.join(sorted(admins)) or 'none'})"
        if tokens
        else "off",
        "mutual TLS" if config.tls_client_ca else "TLS" if config.tls_cert else "plaintext",
    )
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    records = engine.store.records
    if records is not None:  # fail at start, not at the first call, if Redis is not there
        try:
            await records.ping()
        except Unavailable as exc:
            await engine.close()
            raise RuntimeError(exc.message) from None
        log.info("sessions in the shared store %s", records.shown_url)
    await server.start()

    updater = HealthUpdater(health_servicer, engine)
    await updater.update()
    engine.on_models_changed = updater
    if not repository.models:
        log.warning("no model loaded from %s: health reports NOT_SERVING", config.models)
    background = [asyncio.create_task(engine.store.run_expiry(EXPIRY_SWEEP_S))]
    if config.repository_poll_s > 0:
        background.append(asyncio.create_task(engine.poll_repository(config.repository_poll_s)))
    metrics_port = None
    if config.metrics_port >= 0:
        metrics_port = metrics.serve(
            config.metrics_host, config.metrics_port, lambda: updater.status
        )
        log.info(
            "metrics on http://%s:%d/metrics, probes on /healthz and /readyz",
            config.metrics_host,
            metrics_port,
        )
    running = RunningServer(
        server, port, engine, updater, metrics, metrics_port, background, [servicer, kserve]
    )
    if config.openai_port >= 0:
        try:
            running.http = await HttpFront.start(config, engine, metrics, tokens, refusals)
        except RuntimeError:
            await running.stop(0)
            raise
        log.info(
            "OpenAI-compatible HTTP front on %s://%s:%d/v1",
            "https" if config.tls_cert else "http",
            config.openai_host or config.host,
            running.http.port,
        )
    return running


async def serve(config: ServerConfig) -> None:
    running = await create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before "serving": from then on, a drain
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "serving %s on %s:%d (%d models, %d refused)",
        SERVICE_NAME,
        config.host,
        running.port,
        len(running.engine.repository.models),
        len(running.engine.repository.broken),
    )
    log.info("serving %s beside it on the same port (KServe v2 / Triton)", KSERVE_SERVICE_NAME)
    await stop.wait()
    stop.clear()  # a second signal ends the grace period at once
    log.info(
        "shutting down: health NOT_SERVING and calls still served for %.1f s (grace), then "
        "calls in flight end with UNAVAILABLE; a second signal stops at once",
        config.shutdown_grace_s,
    )
    await running.stop(config.shutdown_grace_s, stop)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(argv)
    setup_logging(config)
    log.info("configuration: %s", json.dumps(config.describe()))
    if config.tracing:
        try:
            tracing.setup()
        except tracing.TracingUnavailable as exc:
            log.error("%s", exc)
            sys.exit(2)
        log.info("tracing %s", "on" if tracing.enabled() else "off (OTEL_SDK_DISABLED)")
    try:
        asyncio.run(serve(config))
    except RuntimeError as exc:  # e.g. CUDA requested but unavailable, port in use
        log.error("%s", exc)
        sys.exit(1)
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
