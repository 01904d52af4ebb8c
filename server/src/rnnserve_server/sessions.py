"""The in-process session store: hidden state per session, idle expiry, limits.

State lives in one preallocated array per model (statepool.py), indexed by slot, so
gathering a batch of sessions is one indexing operation. A slot is released exactly
once, under the session's lock, after the session has left the index: no in-flight
call can write into a slot that another session has been given. The expiry sweep
shrinks pools that have become mostly free (their sessions' slots move).

With a shared store (``records``, Redis) the record there is the session and the pool
slot a cache of it, looked up, loaded and saved by the store's shared part
(sharedcopies.py); without one those do nothing.

Everything here runs on the event loop thread; inference threads only ever see copies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from rnnserve_server.errors import (
    Aborted,
    DataLoss,
    InvalidArgument,
    NotFound,
    over_limit,
    shown,
    too_many_sessions,
)
from rnnserve_server.records import RedisRecords
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray
from rnnserve_server.session import Session
from rnnserve_server.sessionrecord import record_steps
from rnnserve_server.sharedcopies import SharedCopies
from rnnserve_server.statecodec import StateCodec
from rnnserve_server.statepool import StatePool

log = logging.getLogger(__name__)

T = TypeVar("T")
SESSION_ID_HEX = 32  # 128 random bits
SWEEP_SLICE = 1000  # sessions the expiry sweep looks at between two turns of the event loop
# First revisions of shared records are drawn below this: Redis's Lua numbers are doubles
# and are written back as integers exactly while they stay under 2**53.
FIRST_REVISIONS = 1 << 40


class SessionStore(SharedCopies):
    def __init__(
        self,
        *,
        max_sessions: int,
        max_sessions_per_owner: int,
        default_idle_timeout_s: float,
        max_idle_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        records: RedisRecords | None = None,
        resolve: Callable[[str, int], Model] | None = None,
        codec: StateCodec | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_sessions_per_owner = max_sessions_per_owner
        self.default_idle_timeout_s = default_idle_timeout_s
        self.max_idle_timeout_s = max_idle_timeout_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._releasing: set[Session] = set()  # out of the index, their slots not yet free
        self._pools: dict[Model, StatePool] = {}
        self._per_owner: dict[str, int] = {}
        self._per_model: dict[str, int] = {}  # by model name: config.toml's max_sessions
        self.expired_total = 0
        self.closed_total = 0
        self.created_total = 0
        # the shared store, how a record's model name and version find the loaded model,
        # and the keys its records are signed with
        self.records = records
        self._resolve = resolve
        self._codec = codec
        if records is not None and (resolve is None or codec is None):
            raise ValueError("a shared store needs resolve and codec")

    def __len__(self) -> int:
        return len(self._sessions)

    def open_sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def pool(self, model: Model) -> StatePool:
        """The state pool of a loaded model (keyed by the object: a reloaded package
        with the same name and version gets a pool of its own)."""
        pool = self._pools.get(model)
        if pool is None:
            pool = self._pools[model] = StatePool(model.runtime.layers, model.runtime.hidden)
        return pool

    def check_idle_timeout(self, idle_timeout_s: float) -> None:
        if not 0 <= idle_timeout_s <= self.max_idle_timeout_s:
            raise InvalidArgument(
                f"idle_timeout_s = {idle_timeout_s} is out of range; allowed: "
                f"0 (the default, {self.default_idle_timeout_s:g}) .. {self.max_idle_timeout_s:g}"
            )

    def check_capacity(self, owner: str, model: Model) -> None:
        """RESOURCE_EXHAUSTED if one more session would pass a limit: the server's, or
        the model's config.toml (the shared store counts sessions itself, across
        replicas, when one is created; a model's config may not limit them there)."""
        if self.records is not None:
            return
        limit = model.config.max_sessions
        if limit is not None and self._per_model.get(model.name, 0) >= limit:
            raise over_limit(
                f"open sessions of model {model.name}",
                self._per_model.get(model.name, 0) + 1,
                limit,
                f"sessions.max_sessions in {model.config.path}",
                retry_after_s=None,  # room comes back when one of its sessions ends
            )
        if len(self._sessions) >= self.max_sessions:
            raise too_many_sessions(len(self._sessions) + 1, self.max_sessions, per_caller=False)
        owned = self._per_owner.get(owner, 0)
        if owned >= self.max_sessions_per_owner:
            raise too_many_sessions(owned + 1, self.max_sessions_per_owner, per_caller=True)

    def create(
        self,
        model: Model,
        *,
        idle_timeout_s: float = 0,
        owner: str = "",
        initial: FloatArray | None = None,
        steps: int = 0,
        rng: np.random.Generator | None = None,
        session_id: str = "",
    ) -> Session:
        """A new session from the model's initial state, or from ``initial`` [L, H].

        Its id is random, unless the caller gives one (a front whose protocol names its
        sessions itself, e.g. KServe's sequence ids): ABORTED while that id is open.
        """
        self.check_idle_timeout(idle_timeout_s)
        if session_id:
            self._make_room_for(session_id)
        self.check_capacity(owner, model)
        session_id = session_id or secrets.token_hex(SESSION_ID_HEX // 2)
        slot = self.pool(model).allocate(
            model.runtime.initial_state if initial is None else initial
        )
        session = Session(
            id=session_id,
            model=model,
            slot=slot,
            idle_timeout_s=idle_timeout_s
            or model.config.idle_timeout_s
            or self.default_idle_timeout_s,
            owner=owner,
            steps=steps,
        )
        if rng is not None:
            session.rng = rng
        self._index(session)
        self.created_total += 1
        log.debug(
            "session created",
            extra={"session": session_id, "model": f"{model.name}/{model.version}"},
        )
        return session

    def _index(self, session: Session) -> None:
        """Put a new session (or this replica's copy of one) in the index and counts."""
        self._sessions[session.id] = session
        self._per_owner[session.owner] = self._per_owner.get(session.owner, 0) + 1
        self._per_model[session.model.name] = self._per_model.get(session.model.name, 0) + 1

    def _make_room_for(self, session_id: str) -> None:
        """Before a session is created under an id its caller chose: an idle-expired
        session of that id is closed, and with a shared store this replica's copy goes
        (the record decides whether the id is taken); an open one: ABORTED."""
        existing = self._sessions.get(session_id)
        if existing is None:
            return
        if self.records is None and not self._idle_past_timeout(existing, self._clock()):
            raise Aborted(f"session {shown(session_id)} exists already")
        self._detach(existing, "expired" if self.records is None else "evicted")
        asyncio.get_running_loop().create_task(self._release(existing))

    async def open(
        self,
        model: Model,
        *,
        idle_timeout_s: float = 0,
        owner: str = "",
        initial: FloatArray | None = None,
        steps: int = 0,
        rng: np.random.Generator | None = None,
        session_id: str = "",
    ) -> Session:
        """``create``, and with a shared store the record there (limits counted there)."""
        session = self.create(
            model,
            idle_timeout_s=idle_timeout_s,
            owner=owner,
            initial=initial,
            steps=steps,
            rng=rng,
            session_id=session_id,
        )
        if self.records is None:
            return session
        # A record's first revision is random, not 0: where an id is used again (a chosen
        # one), a replica's copy of the earlier session never passes for the new one.
        session.revision = secrets.randbelow(FIRST_REVISIONS)
        try:
            await self.records.create(
                session.id,
                owner,
                session.idle_timeout_s,
                self._sealed(session),
                revision=session.revision,
                max_sessions=self.max_sessions,
                max_per_owner=self.max_sessions_per_owner,
            )
        except BaseException:
            self._evict(session)
            raise
        return session

    def _evict(self, session: Session) -> None:
        """Drop this replica's copy (the slot is freed once no call holds it)."""
        if self._detach(session, "evicted"):
            asyncio.get_running_loop().create_task(self._release(session))

    @staticmethod
    def _unknown(session_id: str) -> NotFound:
        return NotFound(
            f"session {shown(session_id)} does not exist (closed, expired or never created)"
        )

    def get(self, session_id: str, owner: str = "") -> Session:
        """An open session of this owner; an idle-expired one is closed here and then,
        so expiry is exact to the call, not to the sweeper's interval."""
        if not session_id:
            raise InvalidArgument("session_id is required")
        session = self._sessions.get(session_id)
        if session is not None and self._idle_past_timeout(session, self._clock()):
            self._detach(session, "expired")
            asyncio.get_running_loop().create_task(self._release(session))
            session = None
        # Another owner's session answers exactly like an unknown one: no existence leak.
        if session is None or session.owner != owner:
            raise self._unknown(session_id)
        return session

    async def close(self, session: Session, *, reason: str = "closed") -> None:
        """Remove the session now; free its slot once its in-flight call (if any) ends.
        With a shared store, closing deletes the record too (``close_named``)."""
        if self.records is not None and reason == "closed":
            session.steps = await self.close_named(session.id, session.owner)
        elif self._detach(session, reason):
            await self._release(session)

    async def close_named(self, session_id: str, owner: str) -> int:
        """CloseSession: end the session now; its step count. With a shared store the
        record is deleted without being loaded first: a replica that never served the
        session sets nothing up for it, and a record that fails its check is closed
        all the same (DATA_LOSS, saying so)."""
        if self.records is None:
            session = self.get(session_id, owner)
            await self.close(session)
            return session.steps
        if not session_id:
            raise InvalidArgument("session_id is required")
        deleted = await self.records.delete(session_id, owner)
        cached = self._sessions.get(session_id)
        if cached is not None and cached.owner == owner and self._detach(cached, "evicted"):
            await self._release(cached)
        if deleted is None:
            raise self._unknown(session_id)
        self.closed_total += 1
        assert self._codec is not None
        try:
            return record_steps(self._codec, deleted, session_id=session_id, owner=owner)
        except DataLoss as exc:
            raise DataLoss(f"{exc.message}; the session is closed all the same") from None

    def _detach(self, session: Session, reason: str) -> bool:
        """Take the session out of the index (new calls: NOT_FOUND). False if it was out."""
        if self._sessions.pop(session.id, None) is None:
            return False  # already closed or expired: the slot is released only once
        session.closed = True
        self._releasing.add(session)
        for counts, key in (
            (self._per_owner, session.owner),
            (self._per_model, session.model.name),
        ):
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]
        if reason == "expired":
            self.expired_total += 1
        elif reason == "closed":
            self.closed_total += 1
        log.debug("session %s", reason, extra={"session": session.id})
        return True

    async def _release(self, session: Session) -> None:
        """Free the slot once no call of the session is in flight (under its lock)."""
        async with session.lock:
            self.pool(session.model).release(session.slot)
            self._releasing.discard(session)

    @staticmethod
    def _idle_past_timeout(session: Session, now: float) -> bool:
        return now - session.last_used > session.idle_timeout_s and not session.busy

    async def expire_idle(self) -> int:
        """Close sessions idle past their timeout; those with a call in flight are busy.
        With a shared store only this replica's copies go (Redis expires the records).
        The sessions are looked at a slice at a time, other calls served in between, so
        that a hundred thousand sessions never hold up the event loop."""
        reason = "expired" if self.records is None else "evicted"
        everyone = list(self._sessions.values())
        expired = 0
        for start in range(0, len(everyone), SWEEP_SLICE):
            now = self._clock()
            for session in everyone[start : start + SWEEP_SLICE]:
                if not session.closed and self._idle_past_timeout(session, now):
                    await self.close(session, reason=reason)
                    expired += 1
            await asyncio.sleep(0)
        self._shrink_pools()
        return expired

    def _shrink_pools(self) -> None:
        """Give back the memory of pools that are mostly free (statepool.py): their
        sessions' slots move."""
        for model, pool in self._pools.items():
            if not pool.shrinkable:
                continue
            holders = {
                s.slot: s
                for s in itertools.chain(self._sessions.values(), self._releasing)
                if s.model is model
            }
            if len(holders) != pool.in_use:  # a slot whose holder is unknown: leave it be
                log.warning(
                    "state pool of %s/%s: %d slots in use, %d sessions hold one; not shrunk",
                    model.name,
                    model.version,
                    pool.in_use,
                    len(holders),
                )
                continue
            for old, new in pool.shrink().items():
                holders[old].slot = new

    async def run_expiry(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire_idle()
            except Exception:  # the sweeper must outlive any single bad session
                log.exception("session expiry sweep failed")

    def state(self, session: Session) -> FloatArray:
        """A copy of one session's state, [L, H]."""
        return self.pool(session.model).states[:, session.slot, :].copy()

    @property
    def state_bytes(self) -> int:
        """Bytes of state arrays allocated (all slots, used or free)."""
        return sum(pool.state_bytes for pool in self._pools.values())
