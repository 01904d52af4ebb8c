"""One Generate call as a job the batcher advances with every other generating session.

The job holds what decides, token by token, what a generation yields and when it ends
(the end token, stop strings, stop tokens, max_tokens); the batcher feeds its token,
calls ``fed`` and, where another token is wanted, samples it (for all jobs together)
and calls ``sampled``. The caller collects ``events`` a message's worth at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server.sampling import SamplingParams
from rnnserve_server.session import Session
from rnnserve_server.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class GeneratedToken:
    id: int
    text: str
    probability: float


@dataclass(frozen=True, slots=True)
class GenerateEvent:
    token: GeneratedToken | None
    steps: int
    finish_reason: str | None = None  # "length", "end_token", "stop_string", "stop_token"
    matched_stop: str = ""


class Generation:
    """The state of one generation between the tokens it feeds.

    A retried call (a request id the session answered last) first ``replay``s the tokens
    the earlier try fed, which sets the count and the stop-string tail as they were;
    then ``start`` hands it the first token of its own.
    """

    def __init__(
        self,
        session: Session,
        params: SamplingParams,
        rng: np.random.Generator,
        tokenizer: Tokenizer,
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        stop_tokens: frozenset[int] = frozenset(),
        per_message: int = 1,
        record: list[tuple[int, float]] | None = None,
        keep_draws: bool = False,
    ) -> None:
        self.session = session
        self.params = params
        self.rng = rng
        self.tokenizer = tokenizer
        self.end_token = tokenizer.special_tokens.get("eos")
        self.token = -1  # the next token to feed, already sampled (``start``, ``sampled``)
        self.probability = 0.0
        self.max_tokens = max_tokens
        self.produced = 0  # tokens of this call fed so far, an earlier try's included
        self.stop = tuple(stop)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.stop_tokens = stop_tokens
        self.tail = ""
        # For a retry: every token fed (``record``) and, with ``keep_draws``, the
        # generator's state before the draw of ``token`` while that token is sampled but
        # not fed (``pending``), so that a call cut off there can go on as if that draw
        # never happened.
        self.record = record
        self.keep_draws = keep_draws
        self.before_draw: Mapping[str, Any] | None = None
        self.pending = False
        self.per_message = max(1, per_message)
        self.events: list[GenerateEvent] = []
        self.finished = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[list[GenerateEvent]] | None = None
        self.queued_at = 0.0

    def _event(self, token: int, probability: float, steps: int) -> GenerateEvent:
        """The event of a token fed when the session reached ``steps``; ends the
        generation at a stop string, a stop token or max_tokens."""
        piece = self.tokenizer.piece(token, first=steps == 1)
        matched = ""
        if self.longest_stop:
            self.tail = (self.tail + piece)[-self.longest_stop :]
            matched = next((s for s in self.stop if self.tail.endswith(s)), "")
        self.produced += 1
        finish = (
            "stop_string"
            if matched
            else "stop_token"
            if token in self.stop_tokens
            else "length"
            if self.produced == self.max_tokens
            else None
        )
        self.finished = finish is not None
        return GenerateEvent(GeneratedToken(token, piece, probability), steps, finish, matched)

    def replay(self, token: int, probability: float, steps: int) -> GenerateEvent:
        """An earlier try's token, fed then (its event again; nothing is fed now)."""
        return self._event(token, probability, steps)

    def start(self, token: int, probability: float, before_draw: Mapping[str, Any]) -> None:
        """The first token this try feeds, sampled by the caller from ``before_draw``."""
        self.token, self.probability, self.pending = token, probability, True
        self.before_draw = before_draw if self.keep_draws else None

    def fed(self) -> bool:
        """``self.token`` has just been fed (session.steps counts it): record its event.
        True if the generation goes on and needs its next token sampled."""
        self.pending = False
        if self.record is not None:
            self.record.append((self.token, self.probability))
        self.session.touch()
        self.events.append(self._event(self.token, self.probability, self.session.steps))
        if self.finished:
            return False
        if self.keep_draws:  # the batcher draws the next token now
            self.before_draw = self.rng.bit_generator.state
        return True

    def fail(self, error: BaseException) -> None:
        """Sampling failed: the events so far go out, the next advance raises this."""
        self.error = error

    def sampled(self, token: int, probability: float) -> None:
        """The next token, sampled from the output after the last one fed."""
        if token == self.end_token:  # the draw belongs to the call: it ended it
            self.events.append(GenerateEvent(None, self.session.steps, "end_token"))
            self.finished = True
            return
        self.token, self.probability, self.pending = token, probability, True
