"""Triton's sequence semantics over rnnserve sessions.

A Triton client names a sequence by its correlation id, the request parameter
``sequence_id`` (a uint64 or a string; 0 and "" mean none), and marks its first and
last requests with ``sequence_start`` and ``sequence_end``. As Triton's sequence batcher
does, here:

- a request with ``sequence_start`` starts the sequence from the model's initial state;
  if the id already names a sequence that never ended, that one is ended first;
- a request without it continues the sequence; if the id names no live sequence (never
  started, ended, or idle past ``max_sequence_idle_microseconds``) it fails with
  INVALID_ARGUMENT: "... must specify the START flag on the first request of the sequence";
- ``sequence_end`` ends the sequence once its request has been answered.

Each sequence is one rnnserve session whose id is *derived* from the caller, the model
version and the sequence id (a hash of them). Nothing maps one to the other, so there is
nothing to keep in step: every replica that shares the session store (Redis) derives the
same id and finds the session another replica started, with its state, idle expiry and
limits exactly as for any session. The caller is part of the id, so two callers' sequence
7 are two sequences, and one caller can never reach another's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass

from rnnserve_server.errors import InvalidArgument, NotFound
from rnnserve_server.inputs import NO_INPUT, TokenInput
from rnnserve_server.lifecycle import Lifecycle
from rnnserve_server.repository import Model
from rnnserve_server.session import Session
from rnnserve_server.sessions import SESSION_ID_HEX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceId:
    """A correlation id: uint64 and string ids are distinct even where they read alike."""

    value: int | str

    def __str__(self) -> str:
        return str(self.value)


def session_id(owner: str, model: Model, sequence: SequenceId) -> str:
    kind = "string" if isinstance(sequence.value, str) else "uint64"
    key = json.dumps([owner, model.name, model.version, kind, sequence.value])
    # 128 bits of the hash, in the form of every session id (shared records check it)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:SESSION_ID_HEX]


class Sequences:
    def __init__(self, sessions: Lifecycle) -> None:
        self.sessions = sessions

    async def begin(
        self,
        model: Model,
        owner: str,
        sequence: SequenceId,
        *,
        start: bool,
        source: TokenInput = NO_INPUT,
        condition: str = "",
    ) -> Session:
        """The session of the sequence a request names: made anew on ``start``."""
        derived = session_id(owner, model, sequence)
        if not start:
            try:
                return await self.sessions.lookup(derived, owner)
            except NotFound:
                raise InvalidArgument(
                    f"inference request for sequence {sequence} to model '{model.name}' must "
                    "specify the START flag on the first request of the sequence"
                ) from None
        try:
            unfinished = await self.sessions.lookup(derived, owner)
        except NotFound:
            pass
        else:
            log.warning(
                "sequence %s for model '%s' has a conflict: the previous sequence did not end "
                "before this sequence start; it is ended early",
                sequence,
                model.name,
                extra={"session": derived},
            )
            await self.end(unfinished)
        return await self.sessions.create(
            model, owner=owner, source=source, condition=condition, session_id=derived
        )

    async def end(self, session: Session) -> None:
        """End a sequence (it may have ended already: expired, or ended elsewhere)."""
        with contextlib.suppress(NotFound):
            await self.sessions.close(session)
