"""Counters the serving core keeps as it works, and the buckets they are kept in.

The core updates these on the event loop thread as calls and runs happen; the metrics
endpoint reads them at scrape time (``metrics.py``), so the hot path pays nothing for
Prometheus. Nothing here imports the core: both sides import this.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# Upper bounds of the histograms' buckets (the metrics endpoint adds +Inf).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # rows per run
QUEUE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)
STEP_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FIRST_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
INTER_TOKEN_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass
class Buckets:
    """A histogram's state: how many values fell at or under each bound, and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, then +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def add(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as Prometheus writes a histogram."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class GenerationStats:
    """One model version's generations: tokens, time to the first, time between them."""

    tokens: int = 0
    first_token: Buckets = field(default_factory=lambda: Buckets(FIRST_TOKEN_BUCKETS))
    inter_token: Buckets = field(default_factory=lambda: Buckets(INTER_TOKEN_BUCKETS))


@dataclass
class EngineStats:
    """Calls cancelled, and each model version's generations, over the server's life."""

    cancelled: dict[str, int] = field(default_factory=dict)
    generation: dict[str, GenerationStats] = field(default_factory=dict)  # by "name/version"

    def cancel(self, method: str) -> None:
        self.cancelled[method] = self.cancelled.get(method, 0) + 1

    def generation_of(self, model: str) -> GenerationStats:
        stats = self.generation.get(model)
        if stats is None:
            stats = self.generation[model] = GenerationStats()
        return stats


@dataclass
class BatchStats:
    """One batcher's runs: sizes, queue waits, step latencies, steps dropped; updated by
    its loop only."""

    runs: int = 0
    steps: int = 0
    dropped: int = 0
    batch_size: Buckets = field(default_factory=lambda: Buckets(BATCH_BUCKETS))
    queue: Buckets = field(default_factory=lambda: Buckets(QUEUE_BUCKETS))
    step: Buckets = field(default_factory=lambda: Buckets(STEP_BUCKETS))
    recent_batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def record(
        self, size: int, waits: list[float], group_waits: list[tuple[float, int]], run_s: float
    ) -> None:
        """A run of ``size`` rows that took ``run_s``: one wait per step, and (wait, rows)
        per group; a step's latency is its wait plus the run."""
        self.runs += 1
        self.steps += size
        self.recent_batch_sizes.append(size)
        self.batch_size.add(size)
        for wait in waits:
            self.queue.add(wait)
            self.step.add(wait + run_s)
        for wait, rows in group_waits:
            self.queue.add(wait, rows)
            self.step.add(wait + run_s, rows)
