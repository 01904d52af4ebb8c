"""The shared session store: every session's record in Redis, so any replica continues it.

With ``session_store = redis://...`` a replica still runs each session in a slot of its
own state pool (batching works as without Redis), but the record in Redis is what a
session *is*: its state, step count, sampling generator, owner, idle timeout and the
last call it answered, as signed bytes (sessionrecord.py) that a replica checks like an
import whenever it reads them. Each call loads the record (one round trip; the state travels
only if another replica changed it since this one last saw it), runs, and saves with a
compare-and-set on the record's revision (a second round trip). The loads and saves
of calls made at the same time share their round trips (pipeline.py): a StepMany
message's sessions, or a batch the batcher ran, cost a round trip each way, not one per
step. Redis keeps the idle
expiry (a key's TTL is the session's idle timeout, refreshed by every call) and the
session limits (sorted sets of live sessions, in total and per caller, scored by expiry).

Every change to a record is one Lua script, so it is atomic on the Redis server: two
replicas can never both apply a step to the same revision (the loser answers ABORTED),
and a session closed on one replica is gone for all. A replica that dies loses nothing
that was acknowledged: a call's effect is in Redis before its answer leaves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rnnserve_server.errors import Aborted, DataLoss, Unavailable, shown, too_many_sessions
from rnnserve_server.pipeline import Call, ScriptPipeline
from rnnserve_server.redaction import without_password

# Every script gets KEYS: the record, the caller's sessions, all sessions; ARGV[1] the
# session id, ARGV[2] the owner. This prelude restarts a session's idle timer: the
# record's TTL and its score (the expiry) in both sorted sets.
_RENEW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function renew(idle)
  local expiry = now_ms() + idle
  redis.call('PEXPIRE', KEYS[1], idle)
  redis.call('ZADD', KEYS[3], expiry, ARGV[1])
  redis.call('ZADD', KEYS[2], expiry, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], idle)
end
"""

# ARGV: session id, owner, idle ms, max sessions, max per caller, then the record's fields
# as name/value pairs.
_CREATE = (
    _RENEW
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local total = redis.call('ZCARD', KEYS[3])
if total >= tonumber(ARGV[4]) then return {-1, total} end
local owned = redis.call('ZCARD', KEYS[2])
if owned >= tonumber(ARGV[5]) then return {-2, owned} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-3, 0} end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
renew(tonumber(ARGV[3]))
return {1, 0}
"""
)

# ARGV: session id, owner, the revision the replica holds (-1: none). Returns nil (no
# such session of this owner), {rev} (unchanged) or the whole record as a flat list.
_LOAD = (
    _RENEW
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return nil end
renew(tonumber(redis.call('HGET', KEYS[1], 'idle_ms')))
local rev = redis.call('HGET', KEYS[1], 'rev')
if rev == ARGV[3] then return {rev} end
return redis.call('HGETALL', KEYS[1])
"""
)

# ARGV: session id, owner, expected revision, then the changed fields as pairs. Returns
# the new revision, -1 (the session is gone) or -2 (another call changed it first).
_SAVE = (
    _RENEW
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return -1 end
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev'))
if rev ~= tonumber(ARGV[3]) then return -2 end
local fields = {'rev', rev + 1}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
renew(tonumber(redis.call('HGET', KEYS[1], 'idle_ms')))
return rev + 1
"""
)

# ARGV: session id, owner. Returns the deleted session's signed record, or nil.
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return nil end
local session = redis.call('HGET', KEYS[1], 'session')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return session
"""


@dataclass(frozen=True)
class Record:
    """A session as Redis holds it: its revision and its signed bytes (sessionrecord.py).
    The owner and idle timeout are stored beside them, plain, for the Lua scripts."""

    revision: int
    session: bytes

    @classmethod
    def parse(cls, session_id: str, flat: list[bytes]) -> Record:
        raw = {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
        try:
            return cls(revision=int(raw[b"rev"]), session=bytes(raw[b"session"]))
        except (KeyError, ValueError, TypeError):
            raise DataLoss(
                f"session {session_id}: its record in the shared store lacks a revision "
                "or its signed bytes (written by another program?)"
            ) from None


class Conflict(Exception):
    """Another call changed the session since this replica loaded it."""


class Gone(Exception):
    """The session no longer exists (closed or expired), or is another caller's."""


UNCHANGED = object()


@contextlib.contextmanager
def _reachable(url: str) -> Iterator[None]:
    """Redis's own failures (connection refused, timeouts) as UNAVAILABLE."""
    import redis.exceptions

    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise Unavailable(f"the session store at {url} cannot be reached: {exc}") from None


class RedisRecords:
    """Session records in one Redis database, under ``prefix``."""

    def __init__(
        self,
        url: str,
        prefix: str = "rnnserve:",
        *,
        connections: int = 32,
        timeout_s: float = 5.0,
    ) -> None:
        import redis.asyncio  # only this store needs the redis package

        self.url = url
        self.shown_url = without_password(url)
        # At most ``connections``; a call finding them all busy waits for one (up to
        # ``timeout_s``, as it waits for an answer), instead of failing at once.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.redis = redis.asyncio.Redis.from_pool(pool)  # closing it closes the pool
        self.pipeline = ScriptPipeline(self.redis)
        self.prefix = prefix
        self._create = self.redis.register_script(_CREATE)
        self._load = self.redis.register_script(_LOAD)
        self._save = self.redis.register_script(_SAVE)
        self._delete = self.redis.register_script(_DELETE)

    async def ping(self) -> None:
        """Fail unless Redis answers; give it the scripts (a Redis that loses them later
        gets them again, pipeline.py)."""
        with _reachable(self.shown_url):
            await self.redis.ping()
            for script in (self._create, self._load, self._save, self._delete):
                await self.redis.script_load(script.script)

    async def close(self) -> None:
        await self.pipeline.close()
        await self.redis.aclose()

    def _keys(self, session_id: str, owner: str) -> list[str]:
        return [
            f"{self.prefix}session:{session_id}",
            f"{self.prefix}owner:{owner}",
            f"{self.prefix}sessions",
        ]

    async def _run(self, script: Any, calls: Sequence[Call]) -> list[Any]:
        """Each call's result, or an Unavailable where Redis refused it; Unavailable
        (raised) if Redis cannot be reached at all."""
        with _reachable(self.shown_url):
            results = await self.pipeline.run(script, calls)
        return [
            Unavailable(f"the session store at {self.shown_url} refused a command: {r}")
            if isinstance(r, Exception)
            else r
            for r in results
        ]

    async def create(
        self,
        session_id: str,
        owner: str,
        idle_timeout_s: float,
        session: bytes,
        *,
        revision: int,
        max_sessions: int,
        max_per_owner: int,
    ) -> None:
        """Store a new session at its first ``revision``; RESOURCE_EXHAUSTED past a limit
        (counted across replicas); ABORTED if the id is taken."""
        idle_ms = round(idle_timeout_s * 1000)
        fields: list[str | int | bytes] = [
            "owner",
            owner,
            "idle_ms",
            idle_ms,
            "rev",
            revision,
            "session",
            session,
        ]
        args = [session_id, owner, idle_ms, max_sessions, max_per_owner, *fields]
        (result,) = await self._run(self._create, [(self._keys(session_id, owner), args)])
        status, count = _raised(result)
        if status == -1:
            raise too_many_sessions(count + 1, max_sessions, per_caller=False)
        if status == -2:
            raise too_many_sessions(count + 1, max_per_owner, per_caller=True)
        if status == -3:  # a chosen id that is open (random ones never collide)
            raise Aborted(f"session {shown(session_id)} exists already")

    async def load(self, session_id: str, owner: str, revision: int) -> Record | object:
        """The record, or UNCHANGED if its revision is still ``revision``; refreshes the
        idle expiry. Gone if there is no such session of this owner."""
        (result,) = await self.load_many([(session_id, owner, revision)])
        if isinstance(result, Exception):
            raise result
        return result

    async def load_many(
        self, sessions: Sequence[tuple[str, str, int]]
    ) -> list[Record | object | Exception]:
        """``load`` for each (session id, owner, revision), together: per session its
        record, UNCHANGED, or its error (Gone, DataLoss, Unavailable)."""
        found = await self._run(
            self._load, [(self._keys(i, owner), [i, owner, rev]) for i, owner, rev in sessions]
        )
        return [_loaded(i, result) for (i, _, _), result in zip(sessions, found, strict=True)]

    async def save(self, session_id: str, owner: str, revision: int, session: bytes) -> int:
        """Store a call's outcome if the record is still at ``revision``; the new revision."""
        (result,) = await self.save_many([(session_id, owner, revision, session)])
        return int(_raised(result))

    async def save_many(
        self, sessions: Sequence[tuple[str, str, int, bytes]]
    ) -> list[int | Exception]:
        """``save`` for each (session id, owner, revision, record), together: per session
        its new revision or its error (Gone, Conflict, Unavailable)."""
        saved = await self._run(
            self._save,
            [
                (self._keys(i, owner), [i, owner, rev, "session", data])
                for i, owner, rev, data in sessions
            ],
        )
        return [_saved(i, result) for (i, *_), result in zip(sessions, saved, strict=True)]

    async def delete(self, session_id: str, owner: str) -> bytes | None:
        """Remove a session; its signed record, or None if there was none of this owner."""
        (result,) = await self._run(
            self._delete, [(self._keys(session_id, owner), [session_id, owner])]
        )
        session = _raised(result)
        return None if session is None else bytes(session)


def _raised(result: Any) -> Any:
    if isinstance(result, Exception):
        raise result
    return result


def _loaded(session_id: str, found: Any) -> Record | object | Exception:
    if isinstance(found, Exception):
        return found
    if found is None:
        return Gone(session_id)
    if len(found) == 1:
        return UNCHANGED
    try:
        return Record.parse(session_id, found)
    except DataLoss as error:
        return error


def _saved(session_id: str, result: Any) -> int | Exception:
    if isinstance(result, Exception):
        return result
    if int(result) == -1:
        return Gone(session_id)
    if int(result) == -2:
        return Conflict(session_id)
    return int(result)
