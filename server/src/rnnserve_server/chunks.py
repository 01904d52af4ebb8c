"""Generation by chunks: every generating session of a model advances K tokens per run
of the generation graph (``gengraph``), fed and sampled inside onnxruntime.

A generation whose caller wants tokens and has none buffered waits here (``advance``);
a flush, scheduled on the event loop like the step batcher's, takes the waiting ones
(up to max_batch, in turn), draws each one's uniforms from its own generator, runs the
graph once for all of them, and hands each its row; the caller then takes its events a
message's worth at a time from what the run left (``Generation.take``), without another
run until they are used up. Rows of plain temperature sampling (greedy included) and of
top-k/top-p sampling run in separate runs (the graph's two variants).

A run takes K steps, so it waits for the others: the flush comes once every generation
in a call on this model waits (or max_batch do), or CHUNK_WAIT_S after the first began to
wait, whichever is first (a generation whose caller reads slowly delays the others by at
most that). Without it, generations streaming a token per message would come back one by
one, each sending its K messages at its own pace, and runs of one or two rows would cost
a step per token each (at 64 such generations: three times the CPU per token).

A short run happens on the event loop, a longer one (by the times measured when the graph
was built) on a worker thread, as in ``batcher``. The session's state in the pool is not
touched here: a generation starts from it, continues from its own rows of the runs, and
writes back the state after its last delivered token when its call ends
(``Generation.settle``), so a caller that goes away leaves nothing fed that it did not see.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from rnnserve_server import tracing
from rnnserve_server.errors import NotFound
from rnnserve_server.generation import GenerateEvent, Generation
from rnnserve_server.gengraph import ChunkResult, GenerationGraph
from rnnserve_server.runtime import ModelRuntime
from rnnserve_server.statepool import StatePool
from rnnserve_server.stats import BatchStats

log = logging.getLogger(__name__)

CHUNK_WAIT_S = 0.002


def _ranked(job: Generation) -> bool:
    params = job.params
    return params.temperature != 0.0 and (params.top_k != 0 or params.top_p < 1.0)


class ChunkBatcher:
    """The chunked generation of one model version."""

    def __init__(
        self,
        runtime: ModelRuntime,
        graph: GenerationGraph,
        pool_of: Callable[[], StatePool],
        executor: Executor,
        *,
        max_batch: int,
        inline_s: float,
    ) -> None:
        self._runtime = runtime
        self._model = f"{runtime.package.manifest.name}/{runtime.package.manifest.version}"
        self.graph = graph
        self._pool_of = pool_of
        self._executor = executor
        self.max_batch = max_batch
        self.inline_s = inline_s
        # Generations whose callers wait for tokens, in turn order (a dict as ordered set).
        self._waiting: dict[Generation, None] = {}
        self._calls: set[Generation] = set()  # generations in a call (between runs or not)
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._running = False
        self._closed = False
        self.stats = BatchStats()

    async def advance(self, generation: Generation) -> list[GenerateEvent]:
        """The generation's next event (with the end token's, where that follows),
        running a chunk first if it has none buffered. One at a time, so that what the
        caller has taken is exactly what it has yielded when it goes away."""
        if not generation.buffered:
            if generation.error is not None:
                raise generation.error
            generation.waiter = asyncio.get_running_loop().create_future()
            generation.queued_at = time.perf_counter()
            self._calls.add(generation)
            self._waiting[generation] = None
            self._schedule()
            try:
                await generation.waiter
            finally:
                generation.waiter = None
                self._waiting.pop(generation, None)
        return generation.take(1)

    def leave(self, generation: Generation) -> None:
        """The generation's call has ended: the runs no longer wait for it."""
        self._calls.discard(generation)
        if self._waiting:
            self._schedule()

    async def close(self) -> None:
        self._closed = True
        self._cancel(list(self._waiting))
        self._waiting.clear()

    @staticmethod
    def _cancel(jobs: list[Generation]) -> None:
        for job in jobs:
            if job.waiter is not None and not job.waiter.done():
                job.waiter.cancel()

    def _schedule(self) -> None:
        if self._closed:
            self._cancel(list(self._waiting))
            return
        if self._scheduled or self._running:
            return
        loop = asyncio.get_running_loop()
        if len(self._waiting) >= min(len(self._calls), self.max_batch):  # all of them
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._scheduled = True
            loop.call_soon(self._flush)
        elif self._timer is None:
            self._timer = loop.call_later(CHUNK_WAIT_S, self._flush)

    def _take(self) -> list[Generation]:
        """Up to max_batch live waiting generations of one variant (the first waiting
        one's), each sent to the back of the line; a closed session fails its caller."""
        jobs: list[Generation] = []
        ranked: bool | None = None
        for job in list(self._waiting):
            waiter = job.waiter
            if waiter is None or waiter.done():
                self._waiting.pop(job, None)
            elif job.session.closed:
                self._waiting.pop(job, None)
                waiter.set_exception(NotFound(f"session {job.session.id} was closed"))
            elif ranked is None or _ranked(job) == ranked:
                ranked = _ranked(job)
                jobs.append(job)
                del self._waiting[job]  # to the back of the line: the rest take turns
                self._waiting[job] = None
                if len(jobs) == self.max_batch:
                    break
        return jobs

    def _flush(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        jobs = self._take()
        if not jobs:
            return
        started = time.perf_counter()
        try:
            run = self._inputs(jobs)
            if self._runtime.chunk_seconds(self.graph.steps, len(jobs)) > self.inline_s:
                future = asyncio.get_running_loop().run_in_executor(self._executor, run)
                self._running = True
                future.add_done_callback(functools.partial(self._ran, jobs, started))
                return
            result = run()
        except Exception as exc:  # a failed run fails its generations, not the batcher
            self._fail(jobs, exc)
        else:
            self._finish(jobs, started, result)
        self._again()

    def _inputs(self, jobs: list[Generation]) -> Callable[[], ChunkResult]:
        """The run of these jobs' chunk, its inputs made (and their uniforms drawn) now."""
        pool = self._pool_of()
        states = pool.states
        count, steps = len(jobs), self.graph.steps
        tokens = np.fromiter((job.token for job in jobs), np.int64, count)
        state = np.stack(
            [states[:, job.session.slot, :] if job.state is None else job.state for job in jobs],
            axis=1,
        )
        uniforms = np.stack([job.begin_chunk(steps) for job in jobs])
        temperature = np.fromiter((job.params.temperature for job in jobs), np.float64, count)
        if not _ranked(jobs[0]):
            return functools.partial(self.graph.run, tokens, state, uniforms, temperature)
        top_k = np.fromiter((job.params.top_k for job in jobs), np.int64, count)
        top_p = np.fromiter((job.params.top_p for job in jobs), np.float64, count)
        return functools.partial(
            self.graph.run, tokens, state, uniforms, temperature, top_k=top_k, top_p=top_p
        )

    def _ran(
        self, jobs: list[Generation], started: float, future: asyncio.Future[ChunkResult]
    ) -> None:
        self._running = False
        if self._closed:
            self._cancel(jobs)
            return
        try:
            result = future.result()
        except Exception as exc:
            self._fail(jobs, exc)
        else:
            self._finish(jobs, started, result)
        self._again()

    def _again(self) -> None:
        if self._waiting:
            self._schedule()

    def _fail(self, jobs: list[Generation], exc: Exception) -> None:
        log.error("generation graph run failed for %d generations", len(jobs), exc_info=exc)
        for job in jobs:
            if job.waiter is not None and not job.waiter.done():
                job.waiter.set_exception(exc)

    def _finish(self, jobs: list[Generation], started: float, result: ChunkResult) -> None:
        self.stats.record(
            len(jobs), [started - job.queued_at for job in jobs], [], time.perf_counter() - started
        )
        tracing.batch_run(self._model, len(jobs), started, [job.trace for job in jobs])
        self.stats.steps += len(jobs) * (self.graph.steps - 1)  # every row fed K tokens
        for row, job in enumerate(jobs):
            waiter = job.waiter
            if waiter is None or waiter.done():  # the caller went away during the run
                self.stats.dropped += 1
                continue
            if job.session.closed:
                self.stats.dropped += 1
                waiter.set_exception(NotFound(f"session {job.session.id} was closed"))
                continue
            job.load_chunk(
                result.sampled[row],
                result.probabilities[row],
                result.states[:, :, row, :],
                result.totals[row],
            )
            waiter.set_result([])
