"""A step-graph run's outputs delivered to everyone in it (``deliver``): the batcher's
half after the run, kept apart from its queueing and scheduling (``batcher``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from rnnserve_server.batchwork import RowsAnswer, Run, StepGroup
from rnnserve_server.errors import NotFound
from rnnserve_server.generation import Generation
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.sampling import Described, SamplingParams, sample_rows
from rnnserve_server.stats import BatchStats

log = logging.getLogger(__name__)

DescribeRows = Callable[[FloatArray, list[int], list[bool]], list[Described]]
TopRows = Callable[[FloatArray, int], tuple[IntArray, FloatArray, FloatArray]]


def deliver(
    run: Run,
    logits: FloatArray,
    new_state: FloatArray,
    *,
    stats: BatchStats,
    describe_rows: DescribeRows | None,
    top_rows: TopRows | None,
) -> list[Generation]:
    """A run's outputs to everyone in it: the new states of the live rows into the pool,
    each step's output (described where asked) to its caller, each group's top k, each
    generation's next token. Rows whose caller left or whose session closed during the
    run are dropped (counted in ``stats``). Returns the generations whose callers have
    their tokens now (no longer waiting)."""
    pool, batch, jobs, slots = run.pool, run.batch, run.jobs, run.slots
    live: list[int] = []
    for i, item in enumerate(batch):
        if item.future.done():  # cancelled during the run: its result is never seen
            stats.dropped += 1
        elif item.session.closed:
            stats.dropped += 1
            item.future.set_exception(NotFound(f"session {item.session.id} was closed"))
        else:
            live.append(i)
    offset = len(batch)
    answered: list[tuple[StepGroup, int, list[int]]] = []  # group, first row, closed rows
    for group in run.groups:
        size = len(group.sessions)
        if group.future.done():
            stats.dropped += size
        else:
            closed = [r for r, session in enumerate(group.sessions) if session.closed]
            if closed:
                stats.dropped += len(closed)
                gone = set(closed)
                live += [offset + r for r in range(size) if r not in gone]
            else:
                live += range(offset, offset + size)
            answered.append((group, offset, closed))
        offset += size
    live_jobs: list[tuple[int, Generation]] = []
    for j, job in enumerate(jobs):
        waiter = job.waiter
        if waiter is None or waiter.done():
            stats.dropped += 1
        elif job.session.closed:
            stats.dropped += 1
            waiter.set_exception(NotFound(f"session {job.session.id} was closed"))
        else:
            live.append(offset + j)
            live_jobs.append((offset + j, job))
    if len(live) == len(slots):
        pool.scatter(slots, new_state)
    elif live:
        pool.scatter([slots[i] for i in live], new_state[:, live, :])
    for group, first, closed in answered:
        _answer(group, logits[first : first + len(group.sessions)], closed, top_rows)
    described: list[int] = []
    for i in live:
        if i >= len(batch):
            break
        item = batch[i]
        item.session.steps += 1
        if item.k >= 0:
            described.append(i)
        else:
            item.future.set_result(logits[i])
    if described:
        assert describe_rows is not None
        try:
            rows = describe_rows(
                logits[described] if len(described) < len(logits) else logits,
                [batch[i].k for i in described],
                [batch[i].full for i in described],
            )
        except Exception as exc:  # fails these callers, not the loop
            log.exception("describing the outputs of a batch failed")
            for i in described:
                batch[i].future.set_exception(exc)
        else:
            for i, out in zip(described, rows, strict=True):
                batch[i].future.set_result(out)
    return _advance_generations(live_jobs, logits) if live_jobs else []


def _answer(
    group: StepGroup, logits: FloatArray, closed: list[int], top_rows: TopRows | None
) -> None:
    """A group's rows have been applied (but the closed ones): its top k, at once."""
    gone = set(closed)
    for r, session in enumerate(group.sessions):
        if not gone or r not in gone:
            session.steps += 1
    assert top_rows is not None
    try:
        ids, probabilities, values = top_rows(logits, group.k)
    except Exception as exc:  # fails this group, not the loop
        log.exception("describing the outputs of a group of steps failed")
        group.future.set_exception(exc)
    else:
        group.future.set_result(RowsAnswer(ids, probabilities, values, closed))


def _advance_generations(
    live_jobs: list[tuple[int, Generation]], logits: FloatArray
) -> list[Generation]:
    """Each job's token has been fed: record it, sample the next ones together; the jobs
    whose callers now have their tokens (or their error)."""
    # Rows sampled with the same parameters are sampled together.
    groups: dict[SamplingParams, list[tuple[int, Generation]]] = {}
    for row, job in live_jobs:
        job.session.steps += 1
        if job.fed():
            groups.setdefault(job.params, []).append((row, job))
    for params, members in groups.items():
        try:
            drawn = sample_rows(
                params,
                logits[[row for row, _ in members]],
                [job.rng for _, job in members],
            )
        except Exception as exc:  # e.g. a NaN output: fails these generations only
            log.exception("sampling failed for %d generations", len(members))
            for _, job in members:
                job.fail(exc)
            continue
        for (_, job), (token, probability) in zip(members, drawn, strict=True):
            job.sampled(token, probability)
    answered = []
    for _, job in live_jobs:
        waiter = job.waiter
        assert waiter is not None
        if job.finished or job.error is not None or len(job.events) >= job.per_message:
            answered.append(job)
            if job.events:  # the tokens fed before a failure still reach the caller
                events, job.events = job.events, []
                waiter.set_result(events)
            else:
                assert job.error is not None
                waiter.set_exception(job.error)
    return answered
