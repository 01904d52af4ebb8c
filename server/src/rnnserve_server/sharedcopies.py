"""A replica's copies of the sessions in the shared store (``records``, Redis).

With a shared store the record there is the session and the pool slot a cache of it:
``lookup`` makes the copy on a replica's first call of the session, ``load`` brings the
slot up to date at the start of each call and ``save`` writes the call's outcome back,
each for one session or for many at once (their records loaded or saved together,
pipeline.py); without a shared store they do nothing. A record is signed bytes
(sessionrecord.py), checked like an import whenever it is read. A part of the session
store (``sessions.SessionStore``), kept apart as the concern it is.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from rnnserve_server.errors import (
    Aborted,
    DataLoss,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from rnnserve_server.records import UNCHANGED, Conflict, Gone, Record, RedisRecords
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray
from rnnserve_server.session import LastCall, Session
from rnnserve_server.sessionrecord import RecordContent, open_record, seal_record
from rnnserve_server.statecodec import RngState, StateCodec
from rnnserve_server.statepool import StatePool

T = TypeVar("T")
SEAL_SLICE = 64  # records signed between two turns of the event loop


class SharedCopies:
    """The shared store's part of ``sessions.SessionStore``."""

    if TYPE_CHECKING:  # the store's own, which these methods use
        records: RedisRecords | None
        _codec: StateCodec | None
        _resolve: Callable[[str, int], Model] | None
        _sessions: dict[str, Session]

        def pool(self, model: Model) -> StatePool: ...
        def state(self, session: Session) -> FloatArray: ...
        def get(self, session_id: str, owner: str = "") -> Session: ...
        def _evict(self, session: Session) -> None: ...
        def _index(self, session: Session) -> None: ...
        @staticmethod
        def _unknown(session_id: str) -> NotFound: ...

    async def lookup(self, session_id: str, owner: str = "") -> Session:
        """The session a call names: ``get``, or with a shared store the replica's copy of
        the record (made from the record on this replica's first call of the session)."""
        if self.records is None:
            return self.get(session_id, owner)
        (found,) = await self.lookup_many([session_id], owner)
        if isinstance(found, ServiceError):
            raise found
        return found

    async def lookup_many(
        self, session_ids: Sequence[str], owner: str
    ) -> list[Session | ServiceError]:
        """``lookup`` of each id (the shared store's records that this replica has no
        copy of loaded together): per id its session or the error it fails with."""
        if self.records is None:
            return [_outcome(functools.partial(self.get, i, owner)) for i in session_ids]
        found: list[Session | ServiceError] = []
        wanted: list[int] = []  # the ids this replica has no copy of
        for i, session_id in enumerate(session_ids):
            session = self._sessions.get(session_id)
            if not session_id:
                found.append(InvalidArgument("session_id is required"))
            elif session is None or session.owner != owner:
                found.append(self._unknown(session_id))  # unless its record is there
                wanted.append(i)
            else:
                found.append(session)
        if not wanted:
            return found
        try:
            records = await self.records.load_many([(session_ids[i], owner, -1) for i in wanted])
        except Unavailable as error:
            records = [error] * len(wanted)
        for i, record in zip(wanted, records, strict=True):
            if isinstance(record, Gone):
                continue
            if isinstance(record, ServiceError):  # DataLoss, Unavailable
                found[i] = record
                continue
            assert isinstance(record, Record)
            session = self._sessions.get(session_ids[i])  # another call may have made it
            if session is None or session.owner != owner:
                found[i] = _outcome(functools.partial(self._adopt, session_ids[i], owner, record))
            else:
                found[i] = session
        return found

    def _sealed(self, session: Session) -> bytes:
        """The session's record as the shared store keeps it (signed)."""
        assert self._codec is not None
        last = session.last or LastCall("")
        content = RecordContent(
            idle_timeout_s=session.idle_timeout_s,
            steps=session.steps,
            rng=RngState.of(session.rng),
            state=self.state(session),
            last_request=last.request_id,
            last_reply=last.reply,
            last_output=last.output,
        )
        return seal_record(self._codec, session.id, session.owner, session.model, content)

    def _opened(
        self, session_id: str, owner: str, data: bytes, model: Model | None = None
    ) -> tuple[Model, RecordContent]:
        """A record's model and content, checked (DATA_LOSS if it fails a check); with
        ``model``, the record must be of that model's name and version."""
        assert self._codec is not None and self._resolve is not None
        resolve = self._resolve

        def model_for(name: str, version: int) -> Model:
            if model is None:
                return resolve(name, version)
            if (name, version) != (model.name, model.version):
                raise DataLoss(
                    f"session {session_id}: its record in the shared store names model "
                    f"{name}/{version}, the session is of {model.name}/{model.version}"
                )
            return model

        return open_record(
            self._codec, data, session_id=session_id, owner=owner, model_for=model_for
        )

    def _adopt(self, session_id: str, owner: str, record: Record) -> Session:
        """This replica's copy of a session another replica made."""
        model, content = self._opened(session_id, owner, record.session)
        slot = self.pool(model).allocate(content.state)
        session = Session(
            id=session_id,
            model=model,
            slot=slot,
            idle_timeout_s=content.idle_timeout_s,
            owner=owner,
        )
        self._apply(session, content, record.revision)
        self._index(session)
        return session

    def _apply(self, session: Session, content: RecordContent, revision: int) -> None:
        self.pool(session.model).states[:, session.slot, :] = content.state
        session.steps = content.steps
        session.rng = content.rng.generator()
        session.revision = revision
        session.last = (
            LastCall(content.last_request, content.last_reply, content.last_output)
            if content.last_request
            else None
        )

    async def load(self, session: Session) -> None:
        """At the start of a call, under the session's lock: the slot as the shared
        record has it (nothing moves unless another replica changed the session)."""
        (error,) = await self.load_many([session])
        if error is not None:
            raise error

    async def load_many(self, sessions: Sequence[Session]) -> list[ServiceError | None]:
        """``load`` for each session (their locks held), the records loaded together:
        per session None, or the error that call fails with."""
        errors: list[ServiceError | None] = [
            None if not s.closed else NotFound(f"session {s.id} was closed") for s in sessions
        ]
        if self.records is None:
            return errors
        live = [i for i, error in enumerate(errors) if error is None]
        try:
            records = await self.records.load_many(
                [(sessions[i].id, sessions[i].owner, sessions[i].revision) for i in live]
            )
        except Unavailable as error:
            records = [error] * len(live)
        for i, record in zip(live, records, strict=True):
            session = sessions[i]
            if isinstance(record, Gone):
                self._evict(session)
                errors[i] = self._unknown(session.id)
            elif isinstance(record, ServiceError):
                errors[i] = record
            elif record is not UNCHANGED:
                assert isinstance(record, Record)
                errors[i] = _outcome(functools.partial(self._reload, session, record))
            if errors[i] is None:
                session.touch()
        return errors

    def _reload(self, session: Session, record: Record) -> None:
        """Bring the slot up to a record another replica wrote (checked: DATA_LOSS)."""
        _, content = self._opened(session.id, session.owner, record.session, session.model)
        self._apply(session, content, record.revision)

    async def save(self, session: Session) -> None:
        """At the end of a call that changed the session, under its lock: the shared
        record updated, if no other call changed it meanwhile (ABORTED otherwise)."""
        (error,) = await self.save_many([session])
        if error is not None:
            raise error

    async def save_many(self, sessions: Sequence[Session]) -> list[ServiceError | None]:
        """``save`` for each session (their locks held), the records saved together: per
        session None, or the error that call fails with."""
        if self.records is None:
            return [None] * len(sessions)
        sealed = []
        for at in range(0, len(sessions), SEAL_SLICE):  # ~35 us each: others' turn between
            if at:
                await asyncio.sleep(0)
            sealed += [
                (s.id, s.owner, s.revision, self._sealed(s)) for s in sessions[at : at + SEAL_SLICE]
            ]
        try:
            saved = await self.records.save_many(sealed)
        except Unavailable as error:
            saved = [error] * len(sessions)
        errors: list[ServiceError | None] = []
        for session, result in zip(sessions, saved, strict=True):
            if isinstance(result, int):
                session.revision = result
                errors.append(None)
            elif isinstance(result, Gone):
                self._evict(session)
                errors.append(self._unknown(session.id))
            elif isinstance(result, Conflict):
                session.revision = -1  # the next call reloads the record
                errors.append(
                    Aborted(
                        f"session {session.id} was changed by another call at the same time "
                        "(on another replica); this call's change was not kept: retry it"
                    )
                )
            else:
                session.revision = -1  # the slot is ahead of the record: reload next time
                errors.append(result if isinstance(result, ServiceError) else None)
        return errors


def _outcome(work: Callable[[], T]) -> T | ServiceError:
    """``work()``, or the ServiceError it raised."""
    try:
        return work()
    except ServiceError as error:
        return error
