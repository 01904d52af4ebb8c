"""Stepping: feed tokens to sessions and answer with the next-token (or label)
distribution, one session at a time (Step, StepStream) or many at once (StepMany)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

import numpy as np

from rnnserve_server import limits, outputs
from rnnserve_server.core import Core
from rnnserve_server.errors import NotFound, ServiceError, out_of_range
from rnnserve_server.inputs import TokenInput, check_request_id, check_top_k, one_token
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.sampling import Top
from rnnserve_server.session import LastCall, Session
from rnnserve_server.statecodec import MAX_STEPS

T = TypeVar("T")
# Rows of a StepMany message read between two turns of the event loop (~1 ms of work).
SLICE_ROWS = 256


@dataclass(slots=True)
class StepOutput:
    steps: int
    consumed: int
    top: Top
    distribution: list[float] | None


@dataclass(frozen=True)
class StepColumns:
    """The steps of a StepMany message, as the message carries them: columns, checked
    against each other by the transport. Step i is ``session_ids[i]`` fed
    ``lengths[i]`` tokens from ``tokens`` (one each where ``lengths`` is None), or
    ``texts[i]`` where its length is 0."""

    session_ids: Sequence[str]
    tokens: Sequence[int]
    lengths: Sequence[int] | None = None
    texts: Sequence[str] | None = None
    request_ids: Sequence[str] | None = None
    k: int | None = None

    def __len__(self) -> int:
        return len(self.session_ids)

    def given(self, index: int, start: int) -> TokenInput:
        """Step ``index``'s input, its tokens starting at ``start``."""
        length = 1 if self.lengths is None else self.lengths[index]
        if length:
            return TokenInput(ids=self.tokens[start : start + length])
        return TokenInput(text=self.texts[index] if self.texts else None)


@dataclass(slots=True)
class StepRows:
    """Single-token steps of one model answered together: the message's row numbers
    (ascending), each session's step count after it, and the top k as arrays [n, k]."""

    rows: list[int]
    steps: list[int]
    ids: IntArray
    probabilities: FloatArray
    names: Sequence[str]

    def outputs(self) -> Iterator[tuple[int, StepOutput]]:
        names = self.names
        for row, steps, ids, probabilities in zip(
            self.rows, self.steps, self.ids.tolist(), self.probabilities.tolist(), strict=True
        ):
            yield row, StepOutput(steps, 1, Top(ids, probabilities, names), None)


@dataclass
class StepManyAnswer:
    """The answers to a StepMany message: blocks of rows answered together, and the
    rows answered one by one (an output or the error that failed that step alone)."""

    size: int
    blocks: list[StepRows] = field(default_factory=list)
    single: dict[int, StepOutput | ServiceError] = field(default_factory=dict)

    def whole(self) -> StepRows | None:
        """The blocks as one, where they answer every step, in order, of one model."""
        blocks = self.blocks
        if self.single or not blocks:
            return None
        first = blocks[0]
        if len(blocks) == 1:
            return first if len(first.rows) == self.size else None
        width = first.ids.shape[1]
        if any(b.names is not first.names or b.ids.shape[1] != width for b in blocks):
            return None
        rows = [row for block in blocks for row in block.rows]
        if rows != list(range(self.size)):
            return None
        return StepRows(
            rows,
            [steps for block in blocks for steps in block.steps],
            np.concatenate([block.ids for block in blocks]),
            np.concatenate([block.probabilities for block in blocks]),
            first.names,
        )

    def in_order(self) -> list[StepOutput | ServiceError]:
        """Every row's outcome, in the message's order."""
        outcomes: dict[int, StepOutput | ServiceError] = dict(self.single)
        for block in self.blocks:
            outcomes.update(block.outputs())
        return [outcomes.get(i, NotFound("session was closed")) for i in range(self.size)]


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
    ) -> StepOutput:
        """Feed tokens; return the next-token (or label) distribution. All or nothing.

        A retry (``request_id`` of the session's last call) is answered from the state
        that call left, without feeding anything again.
        """
        k = check_top_k(k)
        model = session.model
        token = one_token(model, given)
        if token is not None and not request_id and self.core.store.records is None:
            # The common case, kept short (it runs for every streamed token): one token,
            # no retry to recognise, the session in this process (nothing to load or save).
            limits.current().spend(1)
            async with session.lock:
                session.ensure_open()
                session.ensure_room(1)
                top, distribution = await self.core.batcher(model).step(session, token, k, full)
                session.last = None
                session.touch()
                return StepOutput(session.steps, 1, top, distribution)
        ids = self.core.encode(model, given, field="input")
        check_request_id(request_id)
        async with session.lock:
            await self.core.store.load(session)
            if not session.answered(request_id):
                session.ensure_room(len(ids))
            if session.answered(request_id):
                logits = await self.core.current_logits(session)
            elif len(ids) == 1:  # joins the batch, which describes every output at once
                batcher = self.core.batcher(model)
                top, distribution = await batcher.step(session, int(ids[0]), k, full)
                session.last = LastCall(request_id) if request_id else None
                await self.core.store.save(session)
                session.touch()
                return StepOutput(session.steps, 1, top, distribution)
            else:
                logits = await self.core.feed(session, ids)
                session.last = LastCall(request_id) if request_id else None
                await self.core.store.save(session)
            session.touch()
            steps = session.steps
        top, distribution = outputs.describe(model, logits, k, full)
        return StepOutput(steps=steps, consumed=len(ids), top=top, distribution=distribution)

    async def many(self, message: StepColumns, *, owner: str = "") -> StepManyAnswer:
        """Many sessions' steps, each answered alone (an error fails only its step).

        Single-token steps of sessions that appear once and have no call in flight go to
        their model's batcher as one group (arrays in, arrays out: one run for up to
        max_batch of them); the rest (several tokens or text, a session named twice, a
        busy session, a retry, and every step where sessions live in a shared store)
        take the ordinary path, in message order per session.
        """
        answer = StepManyAnswer(len(message))
        single = answer.single
        try:
            k = check_top_k(message.k)
        except ServiceError as exc:  # the message's top_k: every step fails with it
            single.update(dict.fromkeys(range(len(message)), exc))
            return answer
        lengths, request_ids, tokens = message.lengths, message.request_ids, message.tokens
        mentions = Counter(message.session_ids)
        store = self.core.store
        shared = store.records is not None
        found = await self._lookups(message.session_ids, owner) if shared else None
        groups: dict[Model, tuple[list[int], list[Session], list[int]]] = {}
        ordinary: list[tuple[int, Session, int]] = []  # (row, session, where its tokens start)
        start = 0
        starts: list[int] = []  # where each row's tokens start
        for row, session_id in enumerate(message.session_ids):
            if row and not row % SLICE_ROWS:
                await asyncio.sleep(0)  # other callers' turn between slices of a long message
            at = start
            starts.append(at)
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
            if (
                start - at != 1
                or mentions[session_id] > 1
                or session.busy
                or session.steps >= MAX_STEPS  # no room: the ordinary path refuses it
                # a retry is recognised by the session's last call: in a shared store, the
                # record says what it was
                or (request_ids and (shared or session.answered(request_ids[row])))
            ):
                ordinary.append((row, session, at))
                continue
            group = groups.get(session.model)
            if group is None:
                group = groups[session.model] = ([], [], [])
            group[0].append(row)
            group[1].append(session)
            group[2].append(tokens[at])

        async def one(row: int, session: Session, at: int) -> None:
            try:
                single[row] = await self.step(
                    session,
                    message.given(row, at),
                    k=k,
                    full=False,
                    request_id=request_ids[row] if request_ids else "",
                )
            except ServiceError as exc:
                single[row] = exc

        for model, group in list(groups.items()):  # bad ids fail their steps alone
            ordinary += self._busy_meanwhile(group, starts)
            if (
                not group[0]
                or not self._drop_bad_tokens(model, group, single)
                or not self._within_budget(group, single)
            ):
                del groups[model]
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
                rows, sessions, ids = groups[model]
                try:
                    return await self._step_rows(
                        model,
                        rows[part],
                        sessions[part],
                        ids[part],
                        k=k,
                        request_ids=request_ids,
                        single=single,
                    )
                finally:  # a chunk's sessions are free as soon as it is answered
                    for session in sessions[part]:
                        del held[id(session)]
                        session.lock.release()

            # In chunks of SLICE_ROWS, each answered in a turn of the event loop of its
            # own (the batcher still runs up to max_batch rows at once).
            chunks = [
                asyncio.ensure_future(chunk(model, slice(start, start + SLICE_ROWS)))
                for model, (rows, _, _) in groups.items()
                for start in range(0, len(rows), SLICE_ROWS)
            ]
            tasks += chunks
            answer.blocks += await _every(chunks)
            await _every(tasks)
        finally:
            for session in held.values():
                session.lock.release()
            for task in tasks:
                task.cancel()
        return answer

    @staticmethod
    def _drop_bad_tokens(
        model: Model,
        group: tuple[list[int], list[Session], list[int]],
        single: dict[int, StepOutput | ServiceError],
    ) -> bool:
        """Fail the group's steps whose token id is out of range (each alone) and take
        them out of the group; False if none is left."""
        rows, sessions, ids = group
        size = model.package.tokenizer.size
        bad = np.flatnonzero(
            (np.asarray(ids, dtype=np.int64) < 0) | (np.asarray(ids, dtype=np.int64) >= size)
        ).tolist()
        if not bad:
            return True
        for i in reversed(bad):
            single[rows[i]] = out_of_range("input.ids[0]", ids[i], f"0 .. {size - 1}")
            del rows[i], sessions[i], ids[i]
        return bool(rows)

    @staticmethod
    def _busy_meanwhile(
        group: tuple[list[int], list[Session], list[int]], starts: list[int]
    ) -> list[tuple[int, Session, int]]:
        """Take out of the group the sessions another call took up while the message was
        being read (between its slices); they go the ordinary way, which waits for them,
        so that the group's locks are all free and taken at once. ``starts``: where each
        row's tokens start."""
        rows, sessions, ids = group
        moved = []
        for i in reversed(range(len(rows))):
            if sessions[i].busy:
                moved.append((rows[i], sessions[i], starts[rows[i]]))
                del rows[i], sessions[i], ids[i]
        return moved[::-1]

    @staticmethod
    def _within_budget(
        group: tuple[list[int], list[Session], list[int]],
        single: dict[int, StepOutput | ServiceError],
    ) -> bool:
        """Take the group's tokens from the caller's budget; the steps it cannot pay for
        (the last ones) fail alone, RESOURCE_EXHAUSTED. False if none is left."""
        rows, sessions, ids = group
        budget = limits.current()
        paid = budget.spend_up_to(len(rows))
        if paid < len(rows):
            refusal = budget.refusal(len(rows) - paid)
            single.update(dict.fromkeys(rows[paid:], refusal))
            del rows[paid:], sessions[paid:], ids[paid:]
        return bool(rows)

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
        ids: list[int],
        *,
        k: int,
        request_ids: Sequence[str] | None,
        single: dict[int, StepOutput | ServiceError],
    ) -> StepRows:
        """Single-token steps of distinct sessions of one model (their locks held), as
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
        rows, sessions, ids = _without(failed, rows, single, rows, sessions, ids)
        tokens = np.asarray(ids, dtype=np.int64)
        answer = await self.core.batcher(model).step_rows(sessions, tokens, k)
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
        ids_out, probabilities = answer.ids, answer.probabilities
        if len(kept) < len(ids_out):
            ids_out, probabilities = ids_out[kept], probabilities[kept]
        return StepRows(rows, steps, ids_out, probabilities, outputs.names(model))


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
