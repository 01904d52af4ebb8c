"""Batching across sessions: many sessions' single-token steps, one run of the step graph.

Callers ``await feed(session, token)`` while holding the session's lock, so a session
has at most one step in flight and its steps stay in order. The loop collects pending
steps (for ``window_s`` if set, or as they pile up while the previous run is in
flight), gathers their states from the pool with one indexing operation, runs the step
graph once on a worker thread, and scatters new states and logits back.

A step whose caller went away (cancelled) or whose session was closed while it waited
is dropped without touching the pool, so nothing is applied that no caller will see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from rnnserve_server.errors import NotFound
from rnnserve_server.metrics import BATCH_BUCKETS, QUEUE_BUCKETS, bucket_of
from rnnserve_server.runtime import FloatArray, ModelRuntime
from rnnserve_server.sessions import Session, StatePool

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    session: Session
    token: int
    future: asyncio.Future[FloatArray]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters the metrics endpoint reads; updated by the loop only."""

    runs: int = 0
    steps: int = 0
    dropped: int = 0
    batch_size_counts: dict[float, int] = field(default_factory=dict)
    queue_counts: dict[float, int] = field(default_factory=dict)
    queue_seconds_total: float = 0.0
    recent_batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def record(self, size: int, waits: list[float]) -> None:
        self.runs += 1
        self.steps += size
        self.recent_batch_sizes.append(size)
        bucket = bucket_of(size, BATCH_BUCKETS)
        self.batch_size_counts[bucket] = self.batch_size_counts.get(bucket, 0) + 1
        for wait in waits:
            bucket = bucket_of(wait, QUEUE_BUCKETS)
            self.queue_counts[bucket] = self.queue_counts.get(bucket, 0) + 1
        self.queue_seconds_total += sum(waits)


class StepBatcher:
    """The batching loop of one model version."""

    def __init__(
        self,
        runtime: ModelRuntime,
        pool_of: Callable[[], StatePool],
        executor: Executor,
        *,
        max_batch: int,
        window_s: float,
    ) -> None:
        self._runtime = runtime
        self._pool_of = pool_of
        self._executor = executor
        self.max_batch = max_batch
        self.window_s = window_s
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    async def feed(self, session: Session, token: int) -> FloatArray:
        """Feed one token to the session; return the logits after it, shape [K]."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="rnnserve-batcher")
        future: asyncio.Future[FloatArray] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(session, token, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            if not item.future.done():
                item.future.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.window_s > 0 and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.window_s)
            batch = self._take()
            if not self._pending:
                self._wake.clear()
            if not batch:
                continue
            pool = self._pool_of()
            slots = [item.session.slot for item in batch]
            tokens = np.fromiter((item.token for item in batch), np.int64, len(batch))
            state = pool.gather(slots)
            now = time.perf_counter()
            try:
                logits, new_state = await loop.run_in_executor(
                    self._executor, self._runtime.step, tokens, state
                )
            except Exception as exc:  # an inference failure fails this batch, not the loop
                log.exception("step graph run failed for a batch of %d", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.record(len(batch), [now - item.queued_at for item in batch])
            self._scatter(pool, batch, slots, logits, new_state)

    def _take(self) -> list[_Pending]:
        """Up to max_batch live pending steps, oldest first; drop the dead ones."""
        batch: list[_Pending] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if item.future.done():  # the caller gave up while queued
                self.stats.dropped += 1
            elif item.session.closed:
                item.future.set_exception(NotFound(f"session {item.session.id} was closed"))
            else:
                batch.append(item)
        return batch

    def _scatter(
        self,
        pool: StatePool,
        batch: list[_Pending],
        slots: list[int],
        logits: FloatArray,
        new_state: FloatArray,
    ) -> None:
        live: list[int] = []
        for i, item in enumerate(batch):
            if item.future.done():  # cancelled during the run: its result is never seen
                self.stats.dropped += 1
            elif item.session.closed:
                self.stats.dropped += 1
                item.future.set_exception(NotFound(f"session {item.session.id} was closed"))
            else:
                live.append(i)
        if len(live) == len(batch):
            pool.scatter(slots, new_state)
        elif live:
            pool.scatter([slots[i] for i in live], new_state[:, live, :])
        for i in live:
            item = batch[i]
            item.session.steps += 1
            item.future.set_result(logits[i])
