"""Prometheus metrics, served over HTTP on their own port (setting metrics_port; see
httpport for the paths).

Request counts and latencies are recorded as calls finish; everything the core
already counts (sessions, batches, generated tokens, cancellations) is read at scrape
time by a collector, so the hot path pays nothing for it. prometheus_client is the
reference implementation of the exposition format; a private registry per server keeps
several servers in one process (the tests) apart, and holds the client's default
process, platform and garbage-collector collectors too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rnnserve_server.auth import REFUSAL_REASONS
from rnnserve_server.httpport import HttpPort
from rnnserve_server.stats import BatchStats, Buckets, EngineStats

_LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class StoreTraffic(Protocol):
    """What the metrics read of the shared store's pipelines (pipeline.py)."""

    round_trips: int
    commands: int


class SharedStore(Protocol):
    @property
    def pipeline(self) -> StoreTraffic: ...


class SessionCounts(Protocol):
    """What the metrics read of the session store."""

    created_total: int
    closed_total: int
    expired_total: int

    def __len__(self) -> int: ...

    @property
    def state_bytes(self) -> int: ...

    @property
    def records(self) -> SharedStore | None: ...


class Observed(Protocol):
    """What the metrics read of the serving core (the Engine, which does not import
    this module: the metrics depend on the core, never the other way round)."""

    @property
    def store(self) -> SessionCounts: ...

    @property
    def stats(self) -> EngineStats: ...

    def batch_stats(self) -> Iterable[tuple[str, BatchStats]]:
        """(model label "name/version", its batcher's counters) per model batched so far."""
        ...

    def chunk_stats(self) -> Iterable[tuple[str, BatchStats]]:
        """The same for each model's chunked generation (runs of its generation graph)."""
        ...


class Metrics:
    def __init__(self) -> None:
        # No <name>_created series beside each counter and histogram: a start timestamp
        # per label set that dashboards do not use (process_start_time_seconds has it).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(default)
        self.requests = Counter(
            "rnnserve_requests",
            "gRPC calls finished, by method, status code and model version",
            ["method", "code", "model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rnnserve_request_seconds",
            "gRPC call duration in seconds, by method and model version",
            ["method", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "rnnserve_auth_failures",
            "calls refused for want of a valid bearer token, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:  # each shown from the start, at 0
            self.auth_failures.labels(reason)
        self._port: HttpPort | None = None

    def observe(self, method: str, code: str, model: str, seconds: float) -> None:
        """A finished call; ``model`` is "name/version", or "" for a call not bound to one
        (ListModels, ReloadModels, a StepMany stream, a model that does not exist)."""
        self.requests.labels(method, code, model).inc()
        self.latency.labels(method, model).observe(seconds)

    def refused(self, method: str, code: str) -> None:
        """A call refused before it ran (no valid token, not an admin): counted, not timed."""
        self.requests.labels(method, code, "").inc()

    def refused_authentication(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def watch(self, engine: Observed) -> None:
        self.registry.register(_EngineCollector(engine))

    def serve(self, host: str, port: int, health_status: Callable[[], str]) -> int:
        """Start the HTTP port (/metrics, /healthz, /readyz); returns the bound port."""
        self._port = HttpPort(host, port, self.registry, health_status)
        return self._port.port

    def stop(self) -> None:
        if self._port is not None:
            self._port.stop()


class _EngineCollector(Collector):
    def __init__(self, engine: Observed) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        store = self.engine.store
        yield GaugeMetricFamily("rnnserve_sessions_live", "open sessions", value=len(store))
        sessions = CounterMetricFamily(
            "rnnserve_sessions", "sessions by how they began or ended", labels=["event"]
        )
        sessions.add_metric(["created"], store.created_total)
        sessions.add_metric(["closed"], store.closed_total)
        sessions.add_metric(["expired"], store.expired_total)
        yield sessions
        yield GaugeMetricFamily(
            "rnnserve_state_bytes",
            "bytes of hidden-state arrays allocated",
            value=store.state_bytes,
        )
        if store.records is not None:
            traffic = store.records.pipeline
            yield CounterMetricFamily(
                "rnnserve_store_round_trips",
                "pipelines sent to the shared session store, one round trip each",
                value=traffic.round_trips,
            )
            yield CounterMetricFamily(
                "rnnserve_store_commands",
                "record loads, saves, creations and deletions sent to the shared session store",
                value=traffic.commands,
            )
        cancelled = CounterMetricFamily(
            "rnnserve_cancellations", "calls the caller cancelled, by method", labels=["method"]
        )
        for method, count in sorted(self.engine.stats.cancelled.items()):
            cancelled.add_metric([method], count)
        yield cancelled
        generation = sorted(self.engine.stats.generation.items())
        tokens = CounterMetricFamily(
            "rnnserve_generated_tokens",
            "tokens produced by Generate and Translate, by model version",
            labels=["model"],
        )
        for model, stats in generation:
            tokens.add_metric([model], stats.tokens)
        yield tokens
        yield _histogram(
            "rnnserve_time_to_first_token_seconds",
            "seconds from a Generate call's start to its first token, by model version",
            ((model, stats.first_token) for model, stats in generation),
        )
        yield _histogram(
            "rnnserve_inter_token_seconds",
            "seconds between two tokens of one generation, as they are produced",
            ((model, stats.inter_token) for model, stats in generation),
        )
        yield from _runs(
            sorted(self.engine.batch_stats()),
            ("rnnserve_batch_size", "sessions' steps per run of the step graph"),
            ("rnnserve_queue_seconds", "seconds a step waited for its run of the step graph"),
            (
                "rnnserve_step_seconds",
                "seconds from a step (Step, StepMany, or a token of a Generate that goes "
                "token by token) joining its batch to its output: the wait plus the run",
            ),
        )
        yield from _runs(
            sorted(self.engine.chunk_stats()),
            ("rnnserve_chunk_batch_size", "generations per run of the generation graph"),
            (
                "rnnserve_chunk_queue_seconds",
                "seconds a generation waited for its run of the generation graph",
            ),
            (
                "rnnserve_chunk_seconds",
                "seconds from a generation joining a run of the generation graph to its next "
                "generate_chunk_tokens tokens: the wait plus the run",
            ),
        )


def _runs(
    per_model: list[tuple[str, BatchStats]], *families: tuple[str, str]
) -> Iterator[HistogramMetricFamily]:
    """The histograms of one kind of batched run, named and described by ``families`` in
    this order: rows per run, waits, latencies."""
    for (name, documentation), kind in zip(families, ("batch_size", "queue", "step"), strict=True):
        yield _histogram(
            name, documentation, ((model, getattr(stats, kind)) for model, stats in per_model)
        )


def _histogram(
    name: str, documentation: str, per_model: Iterable[tuple[str, Buckets]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["model"])
    for model, buckets in per_model:
        family.add_metric([model], buckets.cumulative(), sum_value=buckets.total)
    return family
