"""The serving core: sessions, steps and generation, independent of any transport.

The gRPC servicer is a thin layer over this; a second front (e.g. the KServe v2 /
Triton protocol) can drive the same sessions. Inference runs on worker threads; the
session store and the state pools are touched only on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server.batcher import StepBatcher
from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import FailedPrecondition, InvalidArgument, out_of_range, over_limit
from rnnserve_server.repository import Model, Repository
from rnnserve_server.runtime import FloatArray
from rnnserve_server.sampling import MAX_TOP_K, SamplingParams, sigmoid, softmax, top_k
from rnnserve_server.sessions import Session, SessionStore
from rnnserve_server.tokenizer import TokenizeError

log = logging.getLogger(__name__)

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
DEFAULT_TOP_K = 5
DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class StepOutput:
    steps: int
    consumed: int
    top: list[tuple[int, str, float]]
    distribution: list[float] | None


@dataclass(frozen=True)
class GeneratedToken:
    id: int
    text: str
    probability: float


@dataclass(frozen=True)
class GenerateEvent:
    token: GeneratedToken | None
    steps: int
    finish_reason: str | None = None  # "length", "end_token" or "stop_string"
    matched_stop: str = ""


class Engine:
    def __init__(self, config: ServerConfig, repository: Repository) -> None:
        self.config = config
        self.repository = repository
        self.sessions = SessionStore(
            max_sessions=config.max_sessions,
            default_idle_timeout_s=config.session_idle_timeout_s,
            max_idle_timeout_s=config.max_session_idle_timeout_s,
        )
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rnnserve-infer")
        self._batchers: dict[tuple[str, int], StepBatcher] = {}

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def batcher(self, model: Model) -> StepBatcher:
        key = (model.name, model.version)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = StepBatcher(
                model.runtime,
                lambda: self.sessions.pool(model),
                self._executor,
                max_batch=self.config.max_batch,
                window_s=self.config.batch_window_us / 1e6,
            )
        return batcher

    async def _infer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ inputs

    def encode_input(
        self, model: Model, *, token_ids: Sequence[int] | None, text: str | None, field: str
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Token ids from ids or text, checked: non-empty, in range, within the limit."""
        if token_ids is None and text is None:
            raise InvalidArgument(f"{field}: give token ids or text")
        if text is not None:
            try:
                ids = model.package.tokenizer.encode(text)
            except TokenizeError as exc:
                raise InvalidArgument(f"{field}.text: {exc}") from None
        else:
            ids = list(token_ids or ())
        if not ids:
            raise InvalidArgument(f"{field} is empty; at least one token is required")
        limit = self.config.max_tokens_per_request
        if len(ids) > limit:
            raise over_limit(f"{field} tokens", len(ids), limit, "max_tokens_per_request")
        size = model.package.tokenizer.size
        for position, token in enumerate(ids):
            if not 0 <= token < size:
                raise out_of_range(f"{field}.ids[{position}]", token, f"0 .. {size - 1}")
        return np.asarray(ids, dtype=np.int64)

    # ------------------------------------------------------------------ outputs

    def _describe(
        self, model: Model, logits: FloatArray, k: int, full: bool
    ) -> tuple[list[tuple[int, str, float]], list[float] | None]:
        manifest = model.package.manifest
        vector = logits.reshape(-1).astype(np.float64)
        probabilities = sigmoid(vector) if manifest.output.kind == "sigmoid" else softmax(vector)
        names = manifest.output.labels or model.package.tokenizer.tokens
        top = [(i, names[i], p) for i, p in top_k(probabilities, k)]
        return top, (probabilities.astype(np.float32).tolist() if full else None)

    # ------------------------------------------------------------------ feeding

    async def _feed(self, session: Session, ids: np.ndarray[Any, np.dtype[np.int64]]) -> FloatArray:
        """Feed tokens to a session (its lock held); the logits after the last, [K].

        One token joins the cross-session batch; several run as one call on a worker
        thread. Either way the state changes only when every token has been applied, so
        a cancelled or failed call leaves the session as it was.
        """
        session.ensure_open()
        if len(ids) == 1:
            return await self.batcher(session.model).feed(session, int(ids[0]))
        pool = self.sessions.pool(session.model)
        state = pool.gather([session.slot])
        logits, state = await self._infer(session.model.runtime.run_tokens, ids, state)
        session.ensure_open()
        pool.scatter([session.slot], state)
        session.steps += len(ids)
        return logits[0]  # type: ignore[no-any-return]

    async def _current_logits(self, session: Session) -> FloatArray:
        """The output for the session's current state, without feeding anything, [K]."""
        session.ensure_open()
        state = self.sessions.pool(session.model).gather([session.slot])
        logits = await self._infer(session.model.runtime.head, state)
        session.ensure_open()
        return logits[0]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ operations

    async def step(
        self,
        session: Session,
        *,
        token_ids: Sequence[int] | None,
        text: str | None,
        k: int | None,
        full: bool,
    ) -> StepOutput:
        """Feed tokens; return the next-token (or label) distribution. All or nothing."""
        k = DEFAULT_TOP_K if k is None else k
        if not 0 <= k <= MAX_TOP_K:
            raise out_of_range("top_k", k, f"0 .. {MAX_TOP_K}")
        model = session.model
        ids = self.encode_input(model, token_ids=token_ids, text=text, field="input")
        async with session.lock:
            logits = await self._feed(session, ids)
            session.touch()
            steps = session.steps
        top, distribution = self._describe(model, logits, k, full)
        return StepOutput(steps=steps, consumed=len(ids), top=top, distribution=distribution)

    async def generate(
        self,
        session: Session,
        *,
        prompt_ids: Sequence[int] | None,
        prompt_text: str | None,
        max_tokens: int,
        temperature: float | None,
        top_k: int,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str],
    ) -> AsyncIterator[GenerateEvent]:
        """Sample tokens one by one, feeding each back; see GenerateRequest in the proto.

        Raises its validation errors before the first event. If the caller goes away
        the task is cancelled at its next await: every token already yielded has been
        fed into the session, and nothing after it.
        """
        model = session.model
        manifest = model.package.manifest
        if manifest.output.kind != "vocabulary":
            raise FailedPrecondition(
                f"model {manifest.name} outputs {manifest.output.kind}, not tokens: "
                "Generate needs a vocabulary output head; use Step"
            )
        max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        if max_tokens > self.config.max_generate_tokens:
            raise over_limit(
                "max_tokens", max_tokens, self.config.max_generate_tokens, "max_generate_tokens"
            )
        tokenizer = model.package.tokenizer
        params = SamplingParams.checked(
            temperature=temperature, top_k=top_k, top_p=top_p, vocabulary=tokenizer.size
        )
        if len(stop) > MAX_STOP_STRINGS:
            raise out_of_range("stop", f"{len(stop)} strings", f"at most {MAX_STOP_STRINGS}")
        for i, s in enumerate(stop):
            if not 0 < len(s) <= MAX_STOP_LENGTH:
                raise out_of_range(f"stop[{i}]", s[:20], f"1 .. {MAX_STOP_LENGTH} characters")
        prompt = None
        if prompt_ids is not None or prompt_text is not None:
            prompt = self.encode_input(
                model, token_ids=prompt_ids, text=prompt_text, field="prompt"
            )
        rng = np.random.Generator(np.random.PCG64(seed)) if seed is not None else session.rng
        end_token = tokenizer.special_tokens.get("eos")
        longest_stop = max((len(s) for s in stop), default=0)

        batcher = self.batcher(model)
        async with session.lock:
            if prompt is not None:
                logits = await self._feed(session, prompt)
            else:
                logits = await self._current_logits(session)
            tail = ""
            for produced in range(max_tokens):
                token, probability = params.sample(logits, rng)
                if token == end_token:
                    session.touch()
                    yield GenerateEvent(None, session.steps, "end_token")
                    return
                first = session.steps == 0
                logits = await batcher.feed(session, token)
                piece = tokenizer.piece(token, first=first)
                session.touch()
                tail = (tail + piece)[-longest_stop:] if longest_stop else ""
                matched = next((s for s in stop if tail.endswith(s)), "")
                finish = (
                    "stop_string" if matched else "length" if produced == max_tokens - 1 else None
                )
                yield GenerateEvent(
                    GeneratedToken(token, piece, probability), session.steps, finish, matched
                )
                if finish:
                    return
