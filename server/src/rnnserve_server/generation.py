"""One Generate call as a job advanced together with every other generating session.

The job holds what decides, token by token, what a generation yields and when it ends
(the end token, stop strings, stop tokens, max_tokens). Two ways to advance it:

- by chunks (``chunks.ChunkBatcher``): one run of the generation graph feeds and samples
  K tokens for every job; ``begin_chunk`` draws the chunk's uniforms from the job's
  generator, ``load_chunk`` hands it the run's row, and ``take`` turns the row into
  events as the caller collects them, so that only tokens delivered count as fed;
  ``settle`` then leaves the session's state and the generator exactly where the last
  delivered token leaves them;
- token by token (the reference, ``generate_chunk_tokens`` 0 or no generation graph):
  the step batcher feeds its token, calls ``fed`` and, where another token is wanted,
  samples it (for all jobs together) and calls ``sampled``; the caller collects
  ``events`` a message's worth at a time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnserve_server.runtime import FloatArray
from rnnserve_server.sampling import SamplingParams, not_finite
from rnnserve_server.session import Session
from rnnserve_server.stats import GenerationStats
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


@dataclass(eq=False, slots=True)
class Chunk:
    """A run of the generation graph, as one generation sees it: the tokens it sampled
    after each token fed, their probabilities, the states after each feed; how far the
    caller has taken it."""

    # The generator's state before the chunk's uniforms were drawn (None: nothing drawn,
    # greedy), and (state, n) for where it stood before the draw of the token pending
    # when the chunk began: that state advanced by n draws.
    rng_before: Mapping[str, Any] | None
    before_pending: tuple[Mapping[str, Any], int] | None
    tokens: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    states: FloatArray | None = None  # [K, L, H]
    usable: int = 0  # steps that can be taken: all, or up to the first non-finite one
    void: int = -1  # the step whose draw was void (its output was not finite), if any
    drawn: int = 0  # uniforms drawn for the chunk
    cursor: int = 0  # steps taken (their tokens fed and delivered)
    used: int = 0  # sampled tokens taken (fed next, or the end token)


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
        stats: GenerationStats | None = None,
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
        # The model's counters: tokens, and the time between two tokens as they are fed.
        self.stats = stats
        self.last_fed_at = 0.0
        self.trace: Any = None  # the span context the runs feeding it link to (tracing on)
        # By chunks: the current one, and the state after the last token taken ([L, H],
        # None until a chunk has been taken from).
        self.chunk: Chunk | None = None
        self.state: FloatArray | None = None

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
        self._count()
        if self.record is not None:
            self.record.append((self.token, self.probability))
        self.session.touch()
        self.events.append(self._event(self.token, self.probability, self.session.steps))
        if self.finished:
            return False
        if self.keep_draws:  # the batcher draws the next token now
            self.before_draw = self.rng.bit_generator.state
        return True

    def _count(self) -> None:
        """A token of this call counts as fed (not a retry's replay): the model's token
        count, and the time since the one before."""
        if self.stats is not None:
            now = time.perf_counter()
            self.stats.tokens += 1
            if self.last_fed_at:
                self.stats.inter_token.add(now - self.last_fed_at)
            self.last_fed_at = now

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

    # ------------------------------------------------------------------ by chunks

    @property
    def buffered(self) -> bool:
        """Whether the current chunk has tokens the caller has not taken yet."""
        chunk = self.chunk
        return chunk is not None and chunk.cursor < chunk.usable

    def begin_chunk(self, steps: int) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The uniforms of a chunk of ``steps`` tokens (drawn from the generator; none
        for greedy sampling), remembering where the generator stood."""
        previous = self.chunk
        if previous is None:  # the pending token is the call's first, drawn by its caller
            pending = None if self.before_draw is None else (self.before_draw, 0)
        elif previous.rng_before is not None:  # drawn by the previous chunk's last step
            pending = (previous.rng_before, len(previous.tokens) - 1)
        else:
            pending = None
        if self.params.temperature == 0.0:
            self.chunk = Chunk(None, None)
            return np.zeros(steps)
        self.chunk = Chunk(
            self.rng.bit_generator.state, pending if self.keep_draws else None, drawn=steps
        )
        return self.rng.random(steps)

    def load_chunk(
        self,
        tokens: np.ndarray[Any, Any],
        probabilities: np.ndarray[Any, Any],
        states: FloatArray,
        totals: np.ndarray[Any, Any],
    ) -> None:
        """This generation's row of the run begun with ``begin_chunk``."""
        chunk = self.chunk
        assert chunk is not None
        chunk.tokens = tokens.tolist()
        chunk.probabilities = probabilities.tolist()
        chunk.states = states
        finite = [math.isfinite(t) for t in totals.tolist()]
        # A step whose output was not finite: its token was fed, its draw is void.
        if all(finite):
            chunk.usable = len(finite)
        else:
            chunk.void = finite.index(False)
            chunk.usable = chunk.void + 1

    def take(self, limit: int) -> list[GenerateEvent]:
        """Up to ``limit`` events from the current chunk (and the end token's after the
        last, where it follows): their tokens count as fed from here on."""
        chunk = self.chunk
        assert chunk is not None and chunk.states is not None
        events: list[GenerateEvent] = []
        session = self.session
        while chunk.cursor < chunk.usable and len(events) < limit:
            at = chunk.cursor
            chunk.cursor += 1
            session.steps += 1
            self._count()
            if self.record is not None:
                self.record.append((self.token, self.probability))
            events.append(self._event(self.token, self.probability, session.steps))
            self.pending = False
            self.state = chunk.states[at]
            if self.finished:
                break
            if at == chunk.void:
                self.error = not_finite()
                break
            token = chunk.tokens[at]
            chunk.used = at + 1
            if token == self.end_token:  # the draw belongs to the call: it ended it
                events.append(GenerateEvent(None, session.steps, "end_token"))
                self.finished = True
                break
            self.token, self.probability, self.pending = token, chunk.probabilities[at], True
        session.touch()
        return events

    def settle(self, states: FloatArray) -> None:
        """At the end of the call: the session's state (in the pool's ``states``
        [L, capacity, H]) after the last token taken, and the generator where that
        token left it (before the pending token's draw, with ``keep_draws``)."""
        chunk = self.chunk
        if chunk is None:  # token by token (or no chunk yet): the reference's rule
            if self.pending and self.before_draw is not None:
                self.rng.bit_generator.state = self.before_draw
            return
        if self.state is not None:
            states[:, self.session.slot, :] = self.state
        if chunk.rng_before is None:  # greedy: nothing was drawn
            return
        drawn = chunk.used
        start: tuple[Mapping[str, Any], int] | None = (chunk.rng_before, 0)
        if self.pending and self.keep_draws:
            drawn -= 1
            if drawn < 0:  # the token pending when the chunk began
                start, drawn = chunk.before_pending, 0
        if start is None or (start[0] is chunk.rng_before and drawn == chunk.drawn):
            return  # the generator stands where the chunk left it
        self.rng.bit_generator.state = start[0]
        if start[1] + drawn:
            self.rng.random(start[1] + drawn)
