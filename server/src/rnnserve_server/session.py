"""One session's bookkeeping (``Session``) and the last call it answered (``LastCall``);
the session store (sessions.py) makes, finds and ends them."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnserve_server.errors import FailedPrecondition, NotFound
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray
from rnnserve_server.statecodec import MAX_STEPS


@dataclass(frozen=True, slots=True)
class LastCall:
    """The last call a session answered, so that its retry is not applied twice.

    ``reply`` is what a Generate produced (tokens and probabilities, how it ended, the
    step count before its first token, the sampling state it would continue from);
    None for a Step, whose answer follows from the state, except for a model without a
    head graph: then ``output`` keeps the output row the Step answered with.
    """

    request_id: str
    reply: dict[str, Any] | None = None
    output: FloatArray | None = None


@dataclass(eq=False, slots=True)
class Session:
    """One session's bookkeeping; its state lives in the model's StatePool at ``slot``.

    Slotted, with the lock and the sampling generator made on first use, so an idle
    session costs little beyond its state (a million idle sessions is a target).
    """

    id: str
    model: Model
    slot: int
    idle_timeout_s: float
    owner: str = ""  # interned: one string shared by all of a caller's sessions
    steps: int = 0
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    revision: int = 0  # of the shared record this slot holds (shared store only)
    last: LastCall | None = None
    _lock: asyncio.Lock | None = None
    _rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        # Each call builds its caller's name anew (rpc.caller_of): without interning,
        # every idle session kept a copy of it (58 bytes each, measured with tracemalloc).
        self.owner = sys.intern(self.owner)

    @property
    def lock(self) -> asyncio.Lock:
        """Orders the session's calls; held for the whole of each call."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def busy(self) -> bool:
        return self._lock is not None and self._lock.locked()

    @property
    def rng(self) -> np.random.Generator:
        """The session's sampling generator (random seed unless one was given)."""
        if self._rng is None:
            self._rng = np.random.Generator(np.random.PCG64(secrets.randbits(128)))
        return self._rng

    @rng.setter
    def rng(self, generator: np.random.Generator) -> None:
        self._rng = generator

    def touch(self, now: float | None = None) -> None:
        self.last_used = time.monotonic() if now is None else now

    def ensure_open(self) -> None:
        if self.closed:
            raise NotFound(f"session {self.id} was closed")

    def ensure_room(self, tokens: int) -> None:
        """FAILED_PRECONDITION if feeding ``tokens`` more could pass MAX_STEPS."""
        if self.steps + tokens > MAX_STEPS:
            raise FailedPrecondition(
                f"session {self.id} is at step {self.steps}; {tokens} more would pass "
                f"{MAX_STEPS}, the most steps a session may take: start a new session"
            )

    def answered(self, request_id: str) -> bool:
        """Whether ``request_id`` names the last call this session answered."""
        return bool(request_id) and self.last is not None and self.last.request_id == request_id
