"""Counters the serving core keeps as it works, and the buckets they are kept in.

The core updates these on the event loop thread as calls and runs happen; the metrics
endpoint reads them at scrape time (``metrics.py``), so the hot path pays nothing for
Prometheus. Nothing here imports the core: both sides import this.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# Upper bounds of the histograms: rows per run of the step graph, seconds a step waited.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)

_INF = float("inf")
_QUEUE_BOUNDS = (*QUEUE_BUCKETS, _INF)
_BATCH_BOUNDS = (*BATCH_BUCKETS, _INF)


@dataclass
class EngineStats:
    """Tokens generated and calls cancelled, over the server's life."""

    generated_tokens: int = 0
    cancelled: dict[str, int] = field(default_factory=dict)

    def cancel(self, method: str) -> None:
        self.cancelled[method] = self.cancelled.get(method, 0) + 1


@dataclass
class BatchStats:
    """One batcher's runs: sizes, queue waits, steps dropped; updated by its loop only."""

    runs: int = 0
    steps: int = 0
    dropped: int = 0
    batch_size_counts: dict[float, int] = field(default_factory=dict)
    queue_counts: dict[float, int] = field(default_factory=dict)
    queue_seconds_total: float = 0.0
    recent_batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def record(self, size: int, waits: list[float], group_waits: list[tuple[float, int]]) -> None:
        """A run of ``size`` rows: one wait per step, and (wait, rows) per group."""
        self.runs += 1
        self.steps += size
        self.recent_batch_sizes.append(size)
        bucket = _BATCH_BOUNDS[bisect.bisect_left(BATCH_BUCKETS, size)]
        self.batch_size_counts[bucket] = self.batch_size_counts.get(bucket, 0) + 1
        counts = self.queue_counts
        for wait in waits:
            bucket = _QUEUE_BOUNDS[bisect.bisect_left(QUEUE_BUCKETS, wait)]
            counts[bucket] = counts.get(bucket, 0) + 1
        self.queue_seconds_total += sum(waits)
        for wait, rows in group_waits:
            bucket = _QUEUE_BOUNDS[bisect.bisect_left(QUEUE_BUCKETS, wait)]
            counts[bucket] = counts.get(bucket, 0) + rows
            self.queue_seconds_total += wait * rows
