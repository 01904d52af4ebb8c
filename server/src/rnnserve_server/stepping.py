"""Stepping: feed tokens (or float vectors) to sessions and answer with the model's
output after the last: the next-token (or label) distribution and the real values, one
session at a time (Step, StepStream) or many at once (StepMany)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from operator import attrgetter
from typing import Any, TypeVar

import numpy as np

from rnnserve_server import limits, outputs
from rnnserve_server.batchwork import step_input
from rnnserve_server.core import Core
from rnnserve_server.errors import NotFound, ServiceError, out_of_range
from rnnserve_server.inputs import (
    TokenInput,
    VectorInput,
    check_request_id,
    check_top_k,
    one_input,
    vectors_of,
)
from rnnserve_server.repository import Model
from rnnserve_server.runtime import Inputs
from rnnserve_server.session import LastCall, Session
from rnnserve_server.statecodec import MAX_STEPS
from rnnserve_server.stepresults import StepColumns, StepManyAnswer, StepOutput, StepRows

T = TypeVar("T")
# Rows of a StepMany message read between two turns of the event loop (~1 ms of work).
SLICE_ROWS = 256


class Stepping:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def step(
        self,
        session: Session,
        given: TokenInput,
        *,
        k: int | None,
        full: bool,
        request_id: str = "",
        with_logits: bool = False,
    ) -> StepOutput:
        """Feed inputs; return the model's output after the last: the next-token (or
        label) distribution and its values, and the logits row too if ``with_logits``.
        All or nothing.

        A retry (``request_id`` of the session's last call) is answered from the state
        that call left, without feeding anything again (for a model without a head
        graph, from the output that call kept).
        """
        k = check_top_k(k)
        model = session.model
        token = one_input(model, given)
        short = not request_id and not with_logits
        if token is not None and short and self.core.store.records is None:
            # The common case, kept short (it runs for every streamed token): one input,
            # no retry to recognise, the session in this process (nothing to load or save).
            limits.current().spend(1)
            async with session.lock:
                session.ensure_open()
                session.ensure_room(1)
                described = await self.core.step_described(session, token, k, full)
                session.last = None
                session.touch()
                return StepOutput(session.steps, 1, *described)
        inputs = self.core.encode(model, given, field="input")
        check_request_id(request_id)
        # The output a retry of this call is answered with cannot be computed again from
        # the state without a head graph: the call keeps it.
        keep_output = bool(request_id) and not model.runtime.has("head")
        async with session.lock:
            await self.core.store.load(session)
            last = session.last
            if last is not None and session.answered(request_id):
                row = last.output
                if row is None:
                    row = await self.core.current_logits(session)
            else:
                session.ensure_room(len(inputs))
                if len(inputs) == 1 and not keep_output and not with_logits:
                    # joins the batch, which describes every output at once
                    x = step_input(inputs)
                    described = await self.core.step_described(session, x, k, full)
                    session.last = LastCall(request_id) if request_id else None
                    await self.core.store.save(session)
                    session.touch()
                    return StepOutput(session.steps, 1, *described)
                row = await self.core.feed(session, inputs)
                session.last = (
                    LastCall(request_id, output=row if keep_output else None)
                    if request_id
                    else None
                )
                await self.core.store.save(session)
            session.touch()
            steps = session.steps
        logits = outputs.split(model, row)[0] if with_logits else None
        return StepOutput(steps, len(inputs), *outputs.describe(model, row, k, full), logits)

    async def many(self, message: StepColumns, *, owner: str = "") -> StepManyAnswer:
        """Many sessions' steps, each answered alone (an error fails only its step).

        Single-token steps of sessions that appear once and have no call in flight go to
        their model's batcher as one group (arrays in, arrays out: one run for up to
        max_batch of them), with a shared store their records loaded and saved
        together; the rest (several tokens or text, a session named twice, a busy
        session, a retry, and where sessions live in a shared store every step with a
        request id) take the ordinary path, in message order per session.
        """
        answer = StepManyAnswer(len(message))
        single = answer.single
        try:
            k = check_top_k(message.k)
        except ServiceError as exc:  # the message's top_k: every step fails with it
            single.update(dict.fromkeys(range(len(message)), exc))
            return answer
        lengths, request_ids, tokens = message.lengths, message.request_ids, message.tokens
        vectors = message.vectors
        mentions = Counter(message.session_ids)
        store = self.core.store
        shared = store.records is not None
        found = await self._lookups(message.session_ids, owner) if shared else None
        groups: dict[Model, tuple[list[int], list[Session], list[Any]]] = {}
        # (row, session, where its tokens start, where its vectors' values start)
        ordinary: list[tuple[int, Session, int, int]] = []
        starts: list[tuple[int, int]] = []  # where each row's tokens and values start
        start = vector_start = 0
        vector_steps = 0  # the message's vectors, counted by their sessions' input sizes
        for row, session_id in enumerate(message.session_ids):
            if row and not row % SLICE_ROWS:
                await asyncio.sleep(0)  # other callers' turn between slices of a long message
            at, vector_at = start, vector_start
            starts.append((at, vector_at))
            count = message.value_count(row)
            if count:
                vector_start += count
            else:
                start += 1 if lengths is None else lengths[row]
            try:  # in message order, so a session named twice keeps its order
                if request_ids:
                    check_request_id(request_ids[row])
                looked_up = store.get(session_id, owner) if found is None else found[row]
                if isinstance(looked_up, ServiceError):
                    raise looked_up
                session = looked_up
            except ServiceError as exc:
                single[row] = exc
                continue
            runtime = session.model.runtime
            if count and runtime.input_size:
                vector_steps += count // runtime.input_size
            if (
                # one input of the kind the model reads
                (count != runtime.input_size if count else runtime.input_size or start - at != 1)
                or mentions[session_id] > 1
                or session.busy
                or session.steps >= MAX_STEPS  # no room: the ordinary path refuses it
                or (
                    request_ids
                    and (shared or session.answered(request_ids[row]) or not runtime.has("head"))
                )  # a retry (in a shared store only the record says), or a call whose output
                # a retry needs kept (no head graph)
            ):
                ordinary.append((row, session, at, vector_at))
                continue
            group = groups.get(session.model)
            if group is None:
                group = groups[session.model] = ([], [], [])
            group[0].append(row)
            group[1].append(session)
            group[2].append(vectors[vector_at : vector_at + count] if count else tokens[at])

        if vector_steps:
            self._check_message_size(message, vector_steps)

        async def one(row: int, session: Session, at: int, vector_at: int) -> None:
            try:
                single[row] = await self.step(
                    session,
                    message.given(row, at, vector_at),
                    k=k,
                    full=False,
                    request_id=request_ids[row] if request_ids else "",
                )
            except ServiceError as exc:
                single[row] = exc

        arrays: dict[Model, Inputs] = {}
        for model, group in list(groups.items()):  # bad inputs fail their steps alone
            ordinary += self._busy_meanwhile(group, starts)
            checked = self._drop_bad_inputs(model, group, single) if group[0] else None
            if checked is not None:
                checked = self._within_budget(group, checked, single)
            if checked is None:
                del groups[model]
            else:
                arrays[model] = checked
        held: dict[int, Session] = {}  # the group sessions whose locks this call holds
        tasks: list[asyncio.Future[Any]] = []
        try:
            # Every group's locks before any group runs, in one order (by session id):
            # two messages cannot each hold a lock the other waits for.
            members = [s for _, sessions, _ in groups.values() for s in sessions]
            members.sort(key=attrgetter("id"))
            for session in members:
                await session.lock.acquire()
                held[id(session)] = session
            tasks = [asyncio.ensure_future(one(*item)) for item in ordinary]

            async def chunk(model: Model, part: slice) -> StepRows:
                rows, sessions, _ = groups[model]
                try:
                    return await self._step_rows(
                        model,
                        rows[part],
                        sessions[part],
                        arrays[model][part],
                        k=k,
                        request_ids=request_ids,
                        single=single,
                    )
                finally:  # a chunk's sessions are free as soon as it is answered
                    for session in sessions[part]:
                        del held[id(session)]
                        session.lock.release()

            # In chunks of SLICE_ROWS, each answered in a turn of the event loop of its
            # own (the batcher still runs up to max_batch rows at once). The first goes
            # to its batcher in this turn, as a single step queued beside it does, so
            # that the two share a run.
            parts = [
                (model, slice(start, start + SLICE_ROWS))
                for model, (rows, _, _) in groups.items()
                for start in range(0, len(rows), SLICE_ROWS)
            ]
            later = [asyncio.ensure_future(chunk(*part)) for part in parts[1:]]
            tasks += later
            if parts:
                answer.blocks.append(await chunk(*parts[0]))
            answer.blocks += await _every(later)
            await _every(tasks)
        finally:
            # The chunks still in flight (the call failed or was cancelled) end first:
            # each releases its own sessions as it ends, so releasing the rest before
            # they had would release a lock twice, or one another call had taken since.
            for task in tasks:
                task.cancel()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)  # none unretrieved
            finally:
                for session in held.values():
                    session.lock.release()
        return answer

    def _check_message_size(self, message: StepColumns, vector_steps: int) -> None:
        """INVALID_ARGUMENT for the stream past max_tokens_per_message inputs in all, a
        step's vectors counted one each (known once its session's model is: the wire
        counted the tokens and texts before reading them)."""
        limit = self.core.config.max_tokens_per_message
        tokens = len(message.tokens) + sum(map(len, message.texts or ()))
        if tokens + vector_steps > limit:
            raise out_of_range(
                "vectors",
                f"{vector_steps} vectors beside {tokens} tokens",
                f"at most {limit} inputs in all per message (max_tokens_per_message)",
            )

    @staticmethod
    def _drop_bad_inputs(
        model: Model,
        group: tuple[list[int], list[Session], list[Any]],
        single: dict[int, StepOutput | ServiceError],
    ) -> Inputs | None:
        """The group's inputs as one array (ids [n] or vectors [n, n_x]), without the
        steps whose token id is out of range or whose vector is not finite: those fail
        alone and leave the group; None if none is left."""
        rows, sessions, given = group
        if model.runtime.input_size:
            inputs: Inputs = np.asarray(given, dtype=np.float32)
            bad = np.flatnonzero(~np.isfinite(inputs).all(axis=1)).tolist()
        else:
            inputs = np.asarray(given, dtype=np.int64)
            size = model.package.vocabulary.size
            bad = np.flatnonzero((inputs < 0) | (inputs >= size)).tolist()
        if not bad:
            return inputs
        for i in reversed(bad):
            if model.runtime.input_size:
                try:
                    vectors_of(model, VectorInput(given[i]), field="input.vectors", limit=1)
                except ServiceError as exc:
                    single[rows[i]] = exc
            else:
                single[rows[i]] = out_of_range("input.ids[0]", given[i], f"0 .. {size - 1}")
            del rows[i], sessions[i], given[i]
        return np.delete(inputs, bad, axis=0) if rows else None

    @staticmethod
    def _busy_meanwhile(
        group: tuple[list[int], list[Session], list[Any]], starts: list[tuple[int, int]]
    ) -> list[tuple[int, Session, int, int]]:
        """Take out of the group the sessions another call took up while the message was
        being read (between its slices); they go the ordinary way, which waits for them,
        so that the group's locks are all free and taken at once. ``starts``: where each
        row's tokens and vector values start."""
        rows, sessions, given = group
        moved = []
        for i in reversed(range(len(rows))):
            if sessions[i].busy:
                moved.append((rows[i], sessions[i], *starts[rows[i]]))
                del rows[i], sessions[i], given[i]
        return moved[::-1]

    @staticmethod
    def _within_budget(
        group: tuple[list[int], list[Session], list[Any]],
        inputs: Inputs,
        single: dict[int, StepOutput | ServiceError],
    ) -> Inputs | None:
        """Take the group's tokens from the caller's budget; the steps it cannot pay for
        (the last ones) fail alone, RESOURCE_EXHAUSTED. Their inputs; None if none is
        left."""
        rows, sessions, given = group
        budget = limits.current()
        paid = budget.spend_up_to(len(rows))
        if paid < len(rows):
            refusal = budget.refusal(len(rows) - paid)
            single.update(dict.fromkeys(rows[paid:], refusal))
            del rows[paid:], sessions[paid:], given[paid:]
        return inputs[:paid] if rows else None

    async def _lookups(
        self, session_ids: Sequence[str], owner: str
    ) -> list[Session | ServiceError]:
        """Every step's session from the shared store: the records this replica has no
        copy of are loaded together (SLICE_ROWS a group, all groups in one go)."""
        parts = await asyncio.gather(
            *(
                self.core.store.lookup_many(session_ids[at : at + SLICE_ROWS], owner)
                for at in range(0, len(session_ids), SLICE_ROWS)
            )
        )
        return [found for part in parts for found in part]

    async def _step_rows(
        self,
        model: Model,
        rows: list[int],
        sessions: list[Session],
        inputs: Inputs,
        *,
        k: int,
        request_ids: Sequence[str] | None,
        single: dict[int, StepOutput | ServiceError],
    ) -> StepRows:
        """Single-input steps of distinct sessions of one model (their locks held), as
        one group; with a shared store their records loaded before and saved after, all
        together (a step whose load or save fails fails alone)."""
        store = self.core.store
        failed = await store.load_many(sessions)
        for i, session in enumerate(sessions):
            if failed[i] is None:
                try:
                    session.ensure_room(1)  # by the record's step count
                except ServiceError as error:
                    failed[i] = error
        if any(failed):
            inputs = inputs[[i for i, error in enumerate(failed) if error is None]]
        rows, sessions = _without(failed, rows, single, rows, sessions)
        answer = await self.core.batcher(model).step_rows(sessions, inputs, k)
        now = time.monotonic()
        for session, row in zip(sessions, rows, strict=True):
            session.last = LastCall(request_ids[row]) if request_ids and request_ids[row] else None
            session.touch(now)
        closed: list[ServiceError | None] = [None] * len(rows)
        for i in answer.closed:  # closed while waiting: not applied
            closed[i] = NotFound(f"session {sessions[i].id} was closed")
        steps = [session.steps for session in sessions]
        kept = list(range(len(rows)))
        rows, sessions, steps, kept = _without(closed, rows, single, rows, sessions, steps, kept)
        saved = await store.save_many(sessions)
        rows, steps, kept = _without(saved, rows, single, rows, steps, kept)
        ids_out, probabilities, values = answer.ids, answer.probabilities, answer.values
        if len(kept) < len(ids_out):
            ids_out, probabilities, values = ids_out[kept], probabilities[kept], values[kept]
        return StepRows(rows, steps, ids_out, probabilities, outputs.names(model), values)


async def _every(tasks: Sequence[asyncio.Future[T]]) -> list[T]:
    """The results of all ``tasks``, or the first error: once every task has ended, so
    that no error of another is left unretrieved."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _without(
    errors: Sequence[ServiceError | None],
    rows: list[int],
    single: dict[int, StepOutput | ServiceError],
    *columns: list[Any],
) -> list[list[Any]]:
    """``columns`` without the entries whose ``errors`` entry is set; each such row of
    the message is answered by its error (in ``single``)."""
    if not any(errors):
        return list(columns)
    for row, error in zip(rows, errors, strict=True):
        if error is not None:
            single[row] = error
    kept = [i for i, error in enumerate(errors) if error is None]
    return [[column[i] for i in kept] for column in columns]
