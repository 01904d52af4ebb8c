"""The retry policy the sync and asyncio clients share.

A call is retried only where a second try cannot apply anything twice: reads (model
metadata, health, session export) and the calls that carry a request id (`Step`,
`Generate`), which the server answers from its record of the session's last call
instead of applying them again. What is retried: UNAVAILABLE (no server, or a load
balancer whose replica went away: HTTP 502), ABORTED (another replica changed the
session at the same moment; nothing of this call was kept) and a stream reset by a
proxy mid-call (INTERNAL with RST_STREAM, which errors.py makes UNAVAILABLE, or
CANCELLED that the caller did not ask for: the replica behind it died or shut down). A
server's own INTERNAL error, and every other status, is raised at once.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import grpc

from rnnserve import _validate
from rnnserve.errors import RnnServeError
from rnnserve.types import GeneratedChunk

REQUEST_ID_BYTES = 12


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `retries` further tries, `backoff_s` before the first, doubling up to
    `max_backoff_s`, each delay jittered by up to half of itself."""

    retries: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    @classmethod
    def of(cls, retries: int) -> RetryPolicy:
        count = _validate.unsigned("retries", retries, bits=8)
        return cls(retries=count)

    def delays(self) -> Iterator[float]:
        """The pauses before each retry."""
        delay = self.backoff_s
        for _ in range(self.retries):
            yield delay * (1 + random.random() / 2)
            delay = min(delay * 2, self.max_backoff_s)


def retryable(error: RnnServeError) -> bool:
    # CANCELLED here is never the caller's own doing (a call it cancels ends without
    # reaching the retry): a proxy reset the stream (RST_STREAM CANCEL) as its replica
    # went away. A reset with INTERNAL_ERROR is UNAVAILABLE already (errors.py).
    return error.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    )


def request_id() -> str:
    """A fresh id for one call, kept across its retries."""
    return secrets.token_hex(REQUEST_ID_BYTES)


class Replay:
    """A retried generation's chunks without the tokens the caller already has.

    The server sends a retried `Generate` from its first token again (it is the same
    call, by its request id, or the same state and sampling generator if the first try
    left nothing behind); those already delivered are dropped here after checking they
    are the same tokens.
    """

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self._seen = 0  # tokens of the current try so far

    def restart(self) -> None:
        self._seen = 0

    def fresh(self, chunk: GeneratedChunk) -> GeneratedChunk | None:
        """The part of `chunk` the caller has not had; None if nothing is new."""
        start, self._seen = self._seen, self._seen + len(chunk.tokens)
        known = max(0, min(len(self.delivered) - start, len(chunk.tokens)))
        again: Sequence[int] = [t.id for t in chunk.tokens[:known]]
        if list(again) != self.delivered[start : start + known]:
            raise RnnServeError(
                grpc.StatusCode.INTERNAL,
                f"a retried generation gave other tokens than the first try at position "
                f"{start}: {list(again)} after {self.delivered[start : start + known]}",
            )
        if known == 0:
            self.delivered.extend(t.id for t in chunk.tokens)
            return chunk
        tokens = chunk.tokens[known:]
        if not tokens and chunk.finish_reason is None:
            return None
        self.delivered.extend(t.id for t in tokens)
        return replace(chunk, tokens=tokens, text="".join(t.text for t in tokens))
