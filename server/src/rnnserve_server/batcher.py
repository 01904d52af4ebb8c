"""Batching across sessions: many sessions' single-token steps, one run of the step graph.

Callers ``await feed(session, x)`` (or ``step``, which also describes the output)
while holding the session's lock, ``x`` a token id or (a model of vector inputs) one
input vector, so a session has at most one step in flight and its
steps stay in order. ``step_rows`` queues the single-token steps of many distinct
sessions (a StepMany message) as one group: arrays in, arrays out, one future per group
rather than per step. Generations join as jobs (``advance``): every generating session
whose caller is waiting for tokens feeds one token per run, and the next tokens of all
of them are sampled together. The loop collects pending work (for ``window_s`` if set,
or as it piles up while the previous run is in flight), gathers the states from the pool
with one indexing operation, runs the step graph once, and scatters new states and
outputs back. A run takes the single steps and the generations before the groups, and a
group that a run passed over goes first in the next: a StepMany message of thousands of
steps makes no other caller wait more than a run.

A short run happens on the event loop thread: handing it to a worker thread and back
costs more than the run itself, and on a busy machine each hand-off also waits for the
scheduler (at 64 lockstep sessions on 2 cores, running every batch of the benchmark
model inline cut the server's CPU per step by about a sixth). A run expected to take
longer than ``inline_s`` (from the model's run times measured when it was loaded)
goes to a worker thread, so that a large model does not hold up the transport.

A step whose caller went away (cancelled) or whose session was closed while it waited
is dropped without touching the pool, so nothing is applied that no caller will see.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from rnnserve_server import tracing
from rnnserve_server.batchresults import DescribeRows, TopRows, deliver
from rnnserve_server.batchwork import PendingStep, RowsAnswer, Run, StepGroup, StepInput
from rnnserve_server.errors import NotFound
from rnnserve_server.generation import GenerateEvent, Generation
from rnnserve_server.runtime import FloatArray, Inputs, ModelRuntime
from rnnserve_server.sampling import Described
from rnnserve_server.session import Session
from rnnserve_server.statepool import StatePool
from rnnserve_server.stats import BatchStats

log = logging.getLogger(__name__)

# A session whose steps no other session's came between for this long steps alone.
ALONE_S = 0.005


class StepBatcher:
    """The batching of one model version: a flush, scheduled on the event loop whenever
    work is queued and no run is in flight, runs everything queued so far."""

    def __init__(
        self,
        runtime: ModelRuntime,
        pool_of: Callable[[], StatePool],
        executor: Executor,
        *,
        max_batch: int,
        window_s: float,
        inline_s: float = 0.0,
        describe_rows: DescribeRows | None = None,
        top_rows: TopRows | None = None,
    ) -> None:
        self._runtime = runtime
        self._pool_of = pool_of
        self._executor = executor
        self.max_batch = max_batch
        self.window_s = window_s
        self.inline_s = inline_s
        self._describe_rows = describe_rows
        self._top_rows = top_rows
        self._pending: deque[PendingStep] = deque()
        self._groups: deque[StepGroup] = deque()
        self._group_rows = 0  # rows of the queued groups
        # Generations whose callers wait for tokens, in turn order (a dict as ordered set).
        self._generating: dict[Generation, None] = {}
        self._callers = 0  # step() calls waiting for their answers
        self._last_session: Session | None = None  # of the latest step() call, and when
        self._last_step = 0.0
        self._scheduled = False  # a flush is due on the event loop
        self._running = False  # a run is in flight on a worker thread
        self._closed = False
        self.stats = BatchStats()

    # ------------------------------------------------------------------ callers

    @functools.cached_property
    def _model(self) -> str:
        """The model version's name/version, as the batch-run spans carry it."""
        manifest = self._runtime.package.manifest
        return f"{manifest.name}/{manifest.version}"

    async def feed(self, session: Session, token: StepInput) -> FloatArray:
        """Feed one input to the session; return the output row after it, [K + R]."""
        future: asyncio.Future[FloatArray] = asyncio.get_running_loop().create_future()
        self._pending.append(
            PendingStep(session, token, future, time.perf_counter(), trace=tracing.link())
        )
        self._schedule()
        return await future

    async def step(self, session: Session, token: StepInput, k: int, full: bool) -> Described:
        """Feed one token; return the top k of the output after it (and the whole
        distribution if ``full``), computed for the whole batch at once; at once, on the
        event loop, where nobody else's step could join it (the lone session)."""
        now = time.perf_counter()
        alone = self._alone(session, now)
        self._last_session, self._last_step = session, now
        if alone:
            return self._step_alone(session, token, k, full)
        self._callers += 1
        try:
            return await self.submit(session, token, k, full)
        finally:
            self._callers -= 1

    def _alone(self, session: Session, now: float) -> bool:
        """No other session stepped lately, nothing is queued, running or waiting for
        its answer, no window is asked for, and the model is short: a step now has
        nobody to be batched with. (Many sessions' steps arrive one handler at a time:
        running each at once because none waited would make every run a batch of one,
        so a session is alone only once no other's step came for ALONE_S.)"""
        busy = (
            (self._last_session is not session and now - self._last_step < ALONE_S)
            or self.window_s
            or self._callers
            or self._pending
            or self._groups
            or self._generating
            or self._scheduled
            or self._running
            or self._closed
        )
        return not busy and self._runtime.step_seconds(1) <= self.inline_s

    def _step_alone(self, session: Session, token: StepInput, k: int, full: bool) -> Described:
        """The lone session's step: the run through the runtime's bound buffers, the
        state written back, the one row described; no future, no hand-off."""
        assert self._describe_rows is not None
        states = self._pool_of().states
        started = time.perf_counter()
        logits, state = self._runtime.step_one(token, states[:, session.slot, :])
        states[:, session.slot, :] = state[:, 0, :]
        session.steps += 1
        self.stats.record(1, [0.0], [], time.perf_counter() - started)
        tracing.batch_run(self._model, 1, started, [tracing.link()])
        return self._describe_rows(logits, [k], [full])[0]

    def submit(
        self, session: Session, token: StepInput, k: int, full: bool
    ) -> asyncio.Future[Described]:
        """``step`` without the await: queue the step, return the future of its answer
        (so that a caller can queue many sessions' steps in one go)."""
        if self._describe_rows is None:
            raise RuntimeError("this batcher was made without describe_rows")
        future: asyncio.Future[Described] = asyncio.get_running_loop().create_future()
        self._pending.append(
            PendingStep(session, token, future, time.perf_counter(), k, full, tracing.link())
        )
        self._schedule()
        return future

    async def step_rows(self, sessions: list[Session], tokens: Inputs, k: int) -> RowsAnswer:
        """Feed one input (ids [n] or vectors [n, n_x]) to each of these distinct
        sessions (their locks held); the top k of each output and its values. Queued as
        groups of up to max_batch rows, each one future."""
        if self._top_rows is None:
            raise RuntimeError("this batcher was made without top_rows")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[RowsAnswer]] = []
        now, trace = time.perf_counter(), tracing.link()
        for start in range(0, len(sessions), self.max_batch):
            part = sessions[start : start + self.max_batch]
            futures.append(loop.create_future())
            self._groups.append(
                StepGroup(
                    part, tokens[start : start + self.max_batch], k, futures[-1], now, trace=trace
                )
            )
            self._group_rows += len(part)
        self._schedule()
        try:
            answers = [await future for future in futures]
        finally:
            for future in futures:  # a cancelled caller: its later groups are dropped
                future.cancel()
        if len(answers) == 1:
            return answers[0]
        closed = [
            number * self.max_batch + row
            for number, answer in enumerate(answers)
            for row in answer.closed
        ]
        return RowsAnswer(
            np.concatenate([a.ids for a in answers]),
            np.concatenate([a.probabilities for a in answers]),
            np.concatenate([a.values for a in answers]),
            closed,
        )

    async def advance(self, generation: Generation) -> list[GenerateEvent]:
        """Generate until ``generation`` has a message's worth of events or ends; return
        them. Nothing is generated while no caller waits here."""
        if generation.error is not None:
            raise generation.error
        generation.waiter = asyncio.get_running_loop().create_future()
        generation.queued_at = time.perf_counter()
        self._generating[generation] = None
        self._schedule()
        try:
            return await generation.waiter
        finally:
            generation.waiter = None
            self._generating.pop(generation, None)

    async def close(self) -> None:
        """Cancel every queued step and waiting generation, and whatever comes later."""
        self._closed = True
        self._cancel_queued()

    def _cancel_queued(self) -> None:
        self._cancel(list(self._pending), list(self._groups), list(self._generating))
        self._pending.clear()
        self._groups.clear()
        self._group_rows = 0

    @staticmethod
    def _futures(batch: list[PendingStep], groups: list[StepGroup]) -> list[asyncio.Future[Any]]:
        """The futures of these steps and groups."""
        return [item.future for item in batch] + [group.future for group in groups]

    @classmethod
    def _cancel(
        cls, batch: list[PendingStep], groups: list[StepGroup], jobs: list[Generation]
    ) -> None:
        for future in cls._futures(batch, groups):
            if not future.done():
                future.cancel()
        for job in jobs:
            if job.waiter is not None and not job.waiter.done():
                job.waiter.cancel()

    # ------------------------------------------------------------------ the runs

    def _schedule(self) -> None:
        """Flush at the end of this turn of the event loop (after ``window_s`` if set),
        so that everything queued meanwhile joins; a run in flight flushes when done."""
        if self._closed:
            self._cancel_queued()
            return
        if self._scheduled or self._running:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        queued = len(self._pending) + self._group_rows + len(self._generating)
        if self.window_s > 0 and queued < self.max_batch:
            loop.call_later(self.window_s, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        batch, groups, jobs = self._take()
        if not (batch or groups or jobs):
            return
        try:
            pool = self._pool_of()
            slots = [item.session.slot for item in batch]
            for group in groups:
                slots += [session.slot for session in group.sessions]
            slots += [job.session.slot for job in jobs]
            size = len(slots)
            if self._runtime.input_size:  # vectors [n_x] each (such a model generates nothing)
                vectors = [np.stack([item.token for item in batch])] if batch else []
                tokens = np.concatenate(vectors + [group.tokens for group in groups])
            elif groups:  # rows in the run's order: the batch, the groups, the jobs
                tokens = np.concatenate(
                    [
                        np.asarray([item.token for item in batch], dtype=np.int64),
                        *(group.tokens for group in groups),
                        np.asarray([job.token for job in jobs], dtype=np.int64),
                    ]
                )
            else:
                tokens = np.fromiter(
                    [item.token for item in batch] + [job.token for job in jobs], np.int64, size
                )
            state = pool.gather(slots)
            run = Run(pool, batch, groups, jobs, slots, time.perf_counter())
            if self._runtime.step_seconds(size) > self.inline_s:
                future = asyncio.get_running_loop().run_in_executor(
                    self._executor, self._runtime.step, tokens, state
                )
                self._running = True
                pool.pin()  # the run's slots must stay where they are until it is back
                future.add_done_callback(functools.partial(self._ran, run))
                return
            outputs = self._runtime.step(tokens, state)
        except Exception as exc:  # an inference failure fails this batch, not the batcher
            self._fail(batch, groups, jobs, exc)
        else:
            self._finish(run, outputs)
        self._again()

    def _ran(self, run: Run, future: asyncio.Future[tuple[FloatArray, FloatArray]]) -> None:
        """A run on a worker thread has ended (back on the event loop)."""
        self._running = False
        run.pool.unpin()
        if self._closed or future.cancelled():  # the server is stopping
            self._cancel(run.batch, run.groups, run.jobs)
            return
        try:
            outputs = future.result()
        except Exception as exc:
            self._fail(run.batch, run.groups, run.jobs, exc)
        else:
            self._finish(run, outputs)
        self._again()

    def _again(self) -> None:
        if self._pending or self._groups or self._generating:
            self._schedule()

    def _fail(
        self,
        batch: list[PendingStep],
        groups: list[StepGroup],
        jobs: list[Generation],
        exc: Exception,
    ) -> None:
        rows = len(batch) + sum(len(group.sessions) for group in groups) + len(jobs)
        log.error("step graph run failed for a batch of %d", rows, exc_info=exc)
        for future in self._futures(batch, groups):
            if not future.done():
                future.set_exception(exc)
        for job in jobs:
            self._generating.pop(job, None)
            if job.waiter is not None and not job.waiter.done():
                job.waiter.set_exception(exc)

    def _finish(self, run: Run, outputs: tuple[FloatArray, FloatArray]) -> None:
        started = run.started
        self.stats.record(
            len(run.slots),
            [started - item.queued_at for item in run.batch]
            + [started - job.queued_at for job in run.jobs],
            [(started - group.queued_at, len(group.sessions)) for group in run.groups],
            time.perf_counter() - started,
        )
        served = [i.trace for i in run.batch] + [g.trace for g in run.groups]
        tracing.batch_run(
            self._model, len(run.slots), started, served + [j.trace for j in run.jobs]
        )
        try:
            answered = deliver(
                run,
                *outputs,
                stats=self.stats,
                describe_rows=self._describe_rows,
                top_rows=self._top_rows,
            )
        except Exception as exc:  # a bug here must not leave callers waiting forever
            self._fail(run.batch, run.groups, run.jobs, exc)
        else:
            for job in answered:
                self._generating.pop(job, None)

    def _take(self) -> tuple[list[PendingStep], list[StepGroup], list[Generation]]:
        """Up to max_batch rows, so that nobody waits behind a bulk of work for more
        than a run: a group that the last run passed over first (it did not fit); then
        the single steps, oldest first, and the waiting generations in turn (each one a
        caller's turn); then the groups that fit, oldest first. A group left waiting by
        a run that took others instead goes first in the next one. The dead are dropped
        on the way; a step whose session was closed fails its caller."""
        batch: list[PendingStep] = []
        groups: list[StepGroup] = []
        room = self._take_groups(groups, self.max_batch, passed_only=True)
        overdue = bool(groups)  # this run is the turn of a group passed over
        room = self._take_steps(batch, room)
        jobs, room = self._take_jobs(room)
        self._take_groups(groups, room, passed_only=False)
        if self._groups and not overdue:
            self._groups[0].passed = True
        return batch, groups, jobs

    def _take_groups(self, groups: list[StepGroup], room: int, *, passed_only: bool) -> int:
        queued = self._groups
        while queued and (not passed_only or queued[0].passed):
            group = queued[0]
            if not group.future.done() and len(group.sessions) > room:
                break
            queued.popleft()
            self._group_rows -= len(group.sessions)
            if group.future.done():  # the caller gave up while queued
                self.stats.dropped += len(group.sessions)
            else:
                groups.append(group)
                room -= len(group.sessions)
        return room

    def _take_steps(self, batch: list[PendingStep], room: int) -> int:
        pending = self._pending
        while room and pending:
            item = pending.popleft()
            if item.future.done():  # the caller gave up while queued
                self.stats.dropped += 1
            elif item.session.closed:
                item.future.set_exception(NotFound(f"session {item.session.id} was closed"))
            else:
                batch.append(item)
                room -= 1
        return room

    def _take_jobs(self, room: int) -> tuple[list[Generation], int]:
        jobs: list[Generation] = []
        if room > 0 and self._generating:
            for job in list(self._generating)[:room]:
                waiter = job.waiter
                if waiter is None or waiter.done():
                    self._generating.pop(job, None)
                elif job.session.closed:
                    self._generating.pop(job, None)
                    waiter.set_exception(NotFound(f"session {job.session.id} was closed"))
                else:
                    jobs.append(job)
                    # to the back of the line: more generations than max_batch take turns
                    del self._generating[job]
                    self._generating[job] = None
        return jobs, room - len(jobs)
