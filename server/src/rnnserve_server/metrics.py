"""Prometheus metrics, served over HTTP on their own port (setting metrics_port).

Request counts and latencies are recorded as calls finish; everything the core
already counts (sessions, batches, generated tokens, cancellations) is read at scrape
time by a collector, so the hot path pays nothing for it. prometheus_client is the
reference implementation of the exposition format; a private registry per server keeps
several servers in one process (the tests) apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rnnserve_server.auth import REFUSAL_REASONS
from rnnserve_server.stats import BATCH_BUCKETS, QUEUE_BUCKETS, BatchStats, EngineStats

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rnnserve_requests",
            "gRPC calls finished, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rnnserve_request_seconds",
            "gRPC call duration in seconds, by method",
            ["method"],
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
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def refused_authentication(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def watch(self, engine: Observed) -> None:
        self.registry.register(_EngineCollector(engine))

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port."""
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


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
        yield CounterMetricFamily(
            "rnnserve_generated_tokens",
            "tokens produced by Generate and Translate",
            value=self.engine.stats.generated_tokens,
        )
        cancelled = CounterMetricFamily(
            "rnnserve_cancellations", "calls the caller cancelled, by method", labels=["method"]
        )
        for method, count in sorted(self.engine.stats.cancelled.items()):
            cancelled.add_metric([method], count)
        yield cancelled
        batch = HistogramMetricFamily(
            "rnnserve_batch_size", "sessions' steps per run of the step graph", labels=["model"]
        )
        queue = HistogramMetricFamily(
            "rnnserve_queue_seconds", "time a step waited for its batch", labels=["model"]
        )
        for model, stats in self.engine.batch_stats():
            label = [model]
            batch.add_metric(
                label, _buckets(stats.batch_size_counts, BATCH_BUCKETS), sum_value=stats.steps
            )
            queue.add_metric(
                label,
                _buckets(stats.queue_counts, QUEUE_BUCKETS),
                sum_value=stats.queue_seconds_total,
            )
        yield batch
        yield queue


def _buckets(counts: dict[float, int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs from per-bucket counts keyed by upper bound."""
    out, running = [], 0
    for bound in (*bounds, float("inf")):
        running += counts.get(bound, 0)
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out
