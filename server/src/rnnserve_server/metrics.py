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

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rnnserve_server.httpport import HttpPort

if TYPE_CHECKING:
    from rnnserve_server.engine import Engine

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
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_QUEUE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(default)
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
        self._port: HttpPort | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def watch(self, engine: Engine) -> None:
        self.registry.register(_EngineCollector(engine))

    def serve(self, host: str, port: int, health_status: Callable[[], str]) -> int:
        """Start the HTTP port (/metrics, /healthz, /readyz); returns the bound port."""
        self._port = HttpPort(host, port, self.registry, health_status)
        return self._port.port

    def stop(self) -> None:
        if self._port is not None:
            self._port.stop()


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        store = self.engine.sessions
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
        for model, batcher in list(self.engine.batchers.items()):
            label = [f"{model.name}/{model.version}"]
            stats = batcher.stats
            batch.add_metric(
                label, _buckets(stats.batch_size_counts, _BATCH_BUCKETS), sum_value=stats.steps
            )
            queue.add_metric(
                label,
                _buckets(stats.queue_counts, _QUEUE_BUCKETS),
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


def bucket_of(value: float, bounds: tuple[float, ...]) -> float:
    for bound in bounds:
        if value <= bound:
            return bound
    return float("inf")


BATCH_BUCKETS = _BATCH_BUCKETS
QUEUE_BUCKETS = _QUEUE_BUCKETS
