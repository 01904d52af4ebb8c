"""The serving core: sessions, steps and generation, independent of any transport.

The gRPC servicer is a thin layer over this; a second front (e.g. the KServe v2 /
Triton protocol) can drive the same sessions. Inference runs on worker threads; the
session store and the state pools are touched only on the event loop thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from rnnserve_server.batcher import StepBatcher
from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    out_of_range,
    over_limit,
)
from rnnserve_server.generation import GeneratedToken, GenerateEvent, Generation
from rnnserve_server.records import RedisRecords
from rnnserve_server.repository import Model, ReloadResult, Repository
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.sampling import (
    MAX_TOP_K,
    Described,
    SamplingParams,
    Top,
    sigmoid,
    softmax,
    top_outputs,
)
from rnnserve_server.sessions import LastCall, Session, SessionStore
from rnnserve_server.statecodec import StateCodec
from rnnserve_server.tokenizer import TokenizeError

log = logging.getLogger(__name__)

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_STOP_TOKENS = 64
DEFAULT_TOP_K = 5
DEFAULT_MAX_TOKENS = 64


class TokenInput(NamedTuple):
    """Token ids or text, as a request carries them (exactly one is set). A named
    tuple: one is made for every step."""

    ids: Sequence[int] | None = None
    text: str | None = None

    @property
    def given(self) -> bool:
        return self.ids is not None or self.text is not None


NO_INPUT = TokenInput()


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

    def in_order(self) -> list[StepOutput | ServiceError]:
        """Every row's outcome, in the message's order."""
        outcomes: dict[int, StepOutput | ServiceError] = dict(self.single)
        for block in self.blocks:
            outcomes.update(block.outputs())
        return [outcomes.get(i, NotFound("session was closed")) for i in range(self.size)]


MAX_REQUEST_ID = 64


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID:
        raise out_of_range("request_id", request_id, f"at most {MAX_REQUEST_ID} characters")


@dataclass(slots=True)
class StepOutput:
    steps: int
    consumed: int
    top: Top
    distribution: list[float] | None


@dataclass(frozen=True)
class GenerateOptions:
    max_tokens: int = 0
    temperature: float | None = None
    top_k: int = 0
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    tokens_per_message: int = 1  # events handed over at a time (the caller's grouping)


@dataclass(frozen=True)
class Classification:
    top: Top
    final: list[float]
    steps: list[list[float]] = field(default_factory=list)


@dataclass
class EngineStats:
    """Counters the metrics endpoint reads."""

    generated_tokens: int = 0
    cancelled: dict[str, int] = field(default_factory=dict)

    def cancel(self, method: str) -> None:
        self.cancelled[method] = self.cancelled.get(method, 0) + 1


class Engine:
    def __init__(self, config: ServerConfig, repository: Repository) -> None:
        self.config = config
        self.repository = repository
        self.state_codec = StateCodec.from_config(config)
        self.sessions = SessionStore(
            max_sessions=config.max_sessions,
            max_sessions_per_owner=config.max_sessions_per_caller,
            default_idle_timeout_s=config.session_idle_timeout_s,
            max_idle_timeout_s=config.max_session_idle_timeout_s,
            records=RedisRecords(config.session_store) if config.session_store else None,
            resolve=self._model_of_record,
            codec=self.state_codec,
        )
        self.stats = EngineStats()
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rnnserve-infer")
        self._batchers: dict[Model, StepBatcher] = {}
        self.on_models_changed: Callable[[ReloadResult], Any] | None = None

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.sessions.records is not None:
            await self.sessions.records.close()

    def _model_of_record(self, name: str, version: int) -> Model:
        """The loaded model a shared session record names (another replica made it)."""
        try:
            return self.repository.get(name, version)
        except NotFound as exc:
            raise FailedPrecondition(
                f"the session's model {name}/{version} is not loaded on this replica "
                f"({exc.message}); every replica must serve the same model repository"
            ) from None

    def batcher(self, model: Model) -> StepBatcher:
        batcher = self._batchers.get(model)
        if batcher is None:
            batcher = self._batchers[model] = StepBatcher(
                model.runtime,
                lambda: self.sessions.pool(model),
                self._executor,
                max_batch=self.config.max_batch,
                window_s=self.config.batch_window_us / 1e6,
                inline_s=self.config.inline_run_us / 1e6,
                describe_rows=functools.partial(self._describe_rows, model),
                top_rows=functools.partial(self._top_rows, model),
            )
        return batcher

    @property
    def batchers(self) -> dict[Model, StepBatcher]:
        return self._batchers

    async def _infer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ repository

    async def reload(self) -> ReloadResult:
        """Rescan the model repository (loading graphs off the event loop)."""
        result: ReloadResult = await self._infer(self.repository.reload)
        for name in result.removed:
            stale = [m for m in self._batchers if f"{m.name}/{m.version}" == name]
            for model in stale:
                if not any(s.model is model for s in self.sessions.open_sessions()):
                    await self._batchers.pop(model).close()
        if self.on_models_changed is not None:
            self.on_models_changed(result)
        return result

    async def poll_repository(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:  # polling must survive any one bad scan
                log.exception("model repository poll failed")

    # ------------------------------------------------------------------ inputs

    def encode_input(self, model: Model, given: TokenInput, *, field: str) -> IntArray:
        """Token ids from ids or text, checked: non-empty, in range, within the limit."""
        if not given.given:
            raise InvalidArgument(f"{field}: give token ids or text")
        if given.text is not None:
            try:
                ids = model.package.tokenizer.encode(given.text)
            except TokenizeError as exc:
                raise InvalidArgument(f"{field}.text: {exc}") from None
        else:
            ids = list(given.ids or ())
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

    @staticmethod
    def _one_token(model: Model, given: TokenInput) -> int | None:
        """The id of a single-token input given as ids (checked), else None."""
        ids = given.ids
        if ids is None or len(ids) != 1:
            return None
        token = ids[0]
        size = model.package.tokenizer.size
        if not 0 <= token < size:
            raise out_of_range("input.ids[0]", token, f"0 .. {size - 1}")
        return token

    @staticmethod
    def _check_top_k(k: int | None) -> int:
        k = DEFAULT_TOP_K if k is None else k
        if not 0 <= k <= MAX_TOP_K:
            raise out_of_range("top_k", k, f"0 .. {MAX_TOP_K}")
        return k

    # ------------------------------------------------------------------ outputs

    @staticmethod
    def probabilities(model: Model, logits: FloatArray) -> np.ndarray[Any, Any]:
        vector = logits.reshape(-1).astype(np.float64)
        return (
            sigmoid(vector) if model.package.manifest.output.kind == "sigmoid" else softmax(vector)
        )

    def _describe(self, model: Model, logits: FloatArray, k: int, full: bool) -> Described:
        """The top k of one output row (and all of it if ``full``)."""
        return self._describe_rows(model, logits.reshape(1, -1), [k], [full])[0]

    @staticmethod
    def _top_rows(model: Model, logits: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        """Per row of logits [B, K]: the ids and probabilities of the k most probable
        outputs, [B, k] each (selected on the logits)."""
        return top_outputs(logits, k, sigmoid_head=model.package.manifest.output.kind == "sigmoid")

    def _describe_rows(
        self, model: Model, logits: FloatArray, ks: list[int], fulls: list[bool]
    ) -> list[Described]:
        """Per row of logits [B, K]: the top k, selected on the logits (no [B, K]
        distribution is made unless a row asks for it: ``full``)."""
        names = model.package.manifest.output.labels or model.package.tokenizer.tokens
        most = max(ks, default=0)
        ids, values = self._top_rows(model, logits, most)
        return [
            (
                Top(row_ids, row_values, names)
                if k == most
                else Top(row_ids[:k], row_values[:k], names),
                self.probabilities(model, logits[r]).astype(np.float32).tolist() if full else None,
            )
            for r, (row_ids, row_values, k, full) in enumerate(
                zip(ids.tolist(), values.tolist(), ks, fulls, strict=True)
            )
        ]

    # ------------------------------------------------------------------ sessions

    async def create_session(
        self,
        model: Model,
        *,
        idle_timeout_s: float = 0,
        owner: str = "",
        seed: int | None = None,
        state: bytes = b"",
        source: TokenInput = NO_INPUT,
        condition: str = "",
    ) -> Session:
        """A new session: from the model's initial state, an encoded source, a
        condition, or imported state bytes (exactly what the model's kind needs)."""
        manifest = model.package.manifest
        kind = manifest.initial_state.kind
        self.sessions.check_idle_timeout(idle_timeout_s)
        initial: FloatArray | None = None
        steps = 0
        rng = None if seed is None else np.random.Generator(np.random.PCG64(seed))
        build: Callable[[], FloatArray] | None = None  # the graph run that makes the state
        if state:
            if source.given or condition:
                raise InvalidArgument("state: an imported state excludes source and condition")
            snapshot = self.state_codec.import_state(state, manifest)
            initial, steps = snapshot.state, snapshot.steps
            if rng is None:
                rng = snapshot.rng.generator()
        elif kind == "encoder":
            if condition:
                raise InvalidArgument(
                    f"condition: model {model.name} takes a source, not a condition"
                )
            if not source.given:
                raise InvalidArgument(
                    f"source: model {model.name} encodes a source: give source_tokens or text"
                )
            build = functools.partial(
                model.runtime.encode, self.encode_input(model, source, field="source")
            )
        elif kind == "condition":
            if source.given:
                raise InvalidArgument(f"source: model {model.name} takes a condition, not a source")
            if condition not in manifest.conditions:
                raise out_of_range("condition", condition, f"one of {list(manifest.conditions)}")
            build = functools.partial(model.runtime.condition, manifest.conditions.index(condition))
        elif source.given or condition:
            raise InvalidArgument(
                f"model {model.name} starts from its {kind} state; it takes no source or condition"
            )
        self.sessions.check_capacity(owner)
        if build is not None:
            initial = await self._infer(build)
        return await self.sessions.open(
            model,
            idle_timeout_s=idle_timeout_s,
            owner=owner,
            initial=initial,
            steps=steps,
            rng=rng,
        )

    async def fork(
        self, session: Session, *, idle_timeout_s: float = 0, owner: str = ""
    ) -> Session:
        async with session.lock:
            await self.sessions.load(session)
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = session.rng.bit_generator.state
            copy = await self.sessions.open(
                session.model,
                idle_timeout_s=idle_timeout_s,
                owner=owner,
                initial=self.sessions.state(session),
                steps=session.steps,
                rng=rng,
            )
            session.touch()
            return copy

    async def export(self, session: Session) -> bytes:
        async with session.lock:
            await self.sessions.load(session)
            session.touch()
            return self.state_codec.export(
                session.model.package.manifest,
                steps=session.steps,
                rng=session.rng,
                state=self.sessions.state(session),
            )

    # ------------------------------------------------------------------ feeding

    async def _feed(self, session: Session, ids: IntArray) -> FloatArray:
        """Feed tokens to a session (its lock held); the logits after the last, [K].

        One token joins the cross-session batch; several run as one call on a worker
        thread (the sequence graph where the package has one). Either way the state
        changes only when every token has been applied, so a cancelled or failed call
        leaves the session as it was.
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
        k = self._check_top_k(k)
        model = session.model
        token = self._one_token(model, given)
        if token is not None and not request_id and self.sessions.records is None:
            # The common case, kept short (it runs for every streamed token): one token,
            # no retry to recognise, the session in this process (nothing to load or save).
            async with session.lock:
                session.ensure_open()
                session.ensure_room(1)
                top, distribution = await self.batcher(model).step(session, token, k, full)
                session.last = None
                session.touch()
                return StepOutput(session.steps, 1, top, distribution)
        ids = self.encode_input(model, given, field="input")
        check_request_id(request_id)
        async with session.lock:
            await self.sessions.load(session)
            if not session.answered(request_id):
                session.ensure_room(len(ids))
            if session.answered(request_id):
                logits = await self._current_logits(session)
            elif len(ids) == 1:  # joins the batch, which describes every output at once
                top, distribution = await self.batcher(model).step(session, int(ids[0]), k, full)
                session.last = LastCall(request_id) if request_id else None
                await self.sessions.save(session)
                session.touch()
                return StepOutput(session.steps, 1, top, distribution)
            else:
                logits = await self._feed(session, ids)
                session.last = LastCall(request_id) if request_id else None
                await self.sessions.save(session)
            session.touch()
            steps = session.steps
        top, distribution = self._describe(model, logits, k, full)
        return StepOutput(steps=steps, consumed=len(ids), top=top, distribution=distribution)

    async def step_many(self, message: StepColumns, *, owner: str = "") -> StepManyAnswer:
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
            k = self._check_top_k(message.k)
        except ServiceError as exc:  # the message's top_k: every step fails with it
            single.update(dict.fromkeys(range(len(message)), exc))
            return answer
        lengths, request_ids, tokens = message.lengths, message.request_ids, message.tokens
        mentions = Counter(message.session_ids)
        local = self.sessions.records is None
        groups: dict[Model, tuple[list[int], list[Session], list[int]]] = {}
        ordinary: list[tuple[int, Session, int]] = []  # (row, session, where its tokens start)
        start = 0
        for row, session_id in enumerate(message.session_ids):
            at = start
            start += 1 if lengths is None else lengths[row]
            try:  # looked up in message order, so a session named twice keeps its order
                if request_ids:
                    check_request_id(request_ids[row])
                if local:
                    session = self.sessions.get(session_id, owner)
                else:
                    session = await self.sessions.lookup(session_id, owner)
            except ServiceError as exc:
                single[row] = exc
                continue
            if (
                not local
                or start - at != 1
                or mentions[session_id] > 1
                or session.busy
                or not session.has_room(1)
                or (request_ids and session.answered(request_ids[row]))
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
            if not self._drop_bad_tokens(model, group, single):
                del groups[model]
        held: dict[int, Session] = {}  # the group sessions whose locks this call holds
        tasks: list[asyncio.Future[None]] = []
        try:
            # Every group's locks before any group runs, in one order (by session id):
            # two messages cannot each hold a lock the other waits for.
            members = [s for _, sessions, _ in groups.values() for s in sessions]
            members.sort(key=attrgetter("id"))
            for session in members:
                await session.lock.acquire()
                held[id(session)] = session
            tasks = [asyncio.ensure_future(one(*item)) for item in ordinary]
            for model, (rows, sessions, ids) in groups.items():
                try:
                    block = await self._step_rows(
                        model, rows, sessions, ids, k=k, request_ids=request_ids, single=single
                    )
                finally:  # each group's sessions are free as soon as it is answered
                    for session in sessions:
                        del held[id(session)]
                        session.lock.release()
                answer.blocks.append(block)
            await asyncio.gather(*tasks)
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
        one group."""
        answer = await self.batcher(model).step_rows(sessions, np.asarray(ids, dtype=np.int64), k)
        for session, row in zip(sessions, rows, strict=True):
            session.last = LastCall(request_ids[row]) if request_ids and request_ids[row] else None
            session.touch()
        steps = [session.steps for session in sessions]
        ids_out, probabilities = answer.ids, answer.probabilities
        if answer.closed:  # closed while waiting: not applied
            for i in answer.closed:
                single[rows[i]] = NotFound(f"session {sessions[i].id} was closed")
            gone = set(answer.closed)
            kept = [i for i in range(len(rows)) if i not in gone]
            rows = [rows[i] for i in kept]
            steps = [steps[i] for i in kept]
            ids_out, probabilities = ids_out[kept], probabilities[kept]
        names = model.package.manifest.output.labels or model.package.tokenizer.tokens
        return StepRows(rows, steps, ids_out, probabilities, names)

    async def classify(
        self, model: Model, given: TokenInput, *, k: int | None, every_step: bool
    ) -> Classification:
        """Label probabilities for a whole sequence from the model's initial state."""
        if model.package.manifest.output.kind == "vocabulary":
            raise FailedPrecondition(
                f"model {model.name} outputs a vocabulary, not labels: Classify needs a "
                "label or sigmoid head; use Step or Generate"
            )
        k = self._check_top_k(k)
        ids = self.encode_input(model, given, field="input")
        initial = model.runtime.initial_state[:, None, :]
        if every_step:
            rows: list[FloatArray] = await self._infer(_logits_per_step, model, ids, initial)
            per_step = [self.probabilities(model, r).astype(np.float32).tolist() for r in rows]
            last = rows[-1]
        else:
            logits, _ = await self._infer(model.runtime.run_tokens, ids, initial)
            last, per_step = logits[0], []
        top, final = self._describe(model, last, k, True)
        assert final is not None
        return Classification(top=top, final=final, steps=per_step)

    def _checked_generation(
        self, model: Model, options: GenerateOptions
    ) -> tuple[int, SamplingParams]:
        manifest = model.package.manifest
        if manifest.output.kind != "vocabulary":
            raise FailedPrecondition(
                f"model {manifest.name} outputs {manifest.output.kind}, not tokens: "
                "Generate needs a vocabulary output head; use Step"
            )
        max_tokens = options.max_tokens or DEFAULT_MAX_TOKENS
        if max_tokens > self.config.max_generate_tokens:
            raise over_limit(
                "max_tokens", max_tokens, self.config.max_generate_tokens, "max_generate_tokens"
            )
        size = model.package.tokenizer.size
        params = SamplingParams.checked(
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            vocabulary=size,
        )
        if len(options.stop) > MAX_STOP_STRINGS:
            raise out_of_range(
                "stop", f"{len(options.stop)} strings", f"at most {MAX_STOP_STRINGS}"
            )
        for i, s in enumerate(options.stop):
            if not 0 < len(s) <= MAX_STOP_LENGTH:
                raise out_of_range(f"stop[{i}]", s[:20], f"1 .. {MAX_STOP_LENGTH} characters")
        if len(options.stop_token_ids) > MAX_STOP_TOKENS:
            raise out_of_range(
                "stop_token_ids", f"{len(options.stop_token_ids)} ids", f"at most {MAX_STOP_TOKENS}"
            )
        for i, token in enumerate(options.stop_token_ids):
            if not 0 <= token < size:
                raise out_of_range(f"stop_token_ids[{i}]", token, f"0 .. {size - 1}")
        return max_tokens, params

    async def generate(
        self,
        session: Session,
        prompt: TokenInput,
        options: GenerateOptions,
        *,
        request_id: str = "",
    ) -> AsyncGenerator[GenerateEvent, None]:
        """Sample tokens one by one, feeding each back; see GenerateRequest in the proto.

        Raises its validation errors before the first event. If the caller goes away
        the task is cancelled at its next await: every token already yielded has been
        fed into the session, and nothing after it. A retry (``request_id`` of the
        session's last call) yields that call's tokens again and, if it was cut off,
        continues it with the sampling state it stopped at.
        """
        model = session.model
        max_tokens, params = self._checked_generation(model, options)
        ids = self.encode_input(model, prompt, field="prompt") if prompt.given else None
        check_request_id(request_id)
        tokenizer = model.package.tokenizer
        batcher = self.batcher(model)
        async with session.lock:
            await self.sessions.load(session)
            earlier = session.last.reply if session.last and session.answered(request_id) else None
            if earlier is None:  # a retry continues a call that had room for all of it
                session.ensure_room((0 if ids is None else len(ids)) + max_tokens)
            rng = session.rng
            if options.seed is not None:
                rng = np.random.Generator(np.random.PCG64(options.seed))
                if earlier is not None and earlier["rng"] is not None:
                    rng.bit_generator.state = earlier["rng"]
            reply: dict[str, Any] = earlier or {
                "base": -1,
                "tokens": [],
                "finish": None,
                "rng": None,
            }
            generation = Generation(
                session,
                params,
                rng,
                tokenizer,
                max_tokens=max_tokens,
                stop=options.stop,
                stop_tokens=frozenset(options.stop_token_ids),
                per_message=options.tokens_per_message,
                record=reply["tokens"],
                keep_draws=bool(request_id),
            )
            for token, probability in reply["tokens"]:  # the retried call's tokens, again
                steps = reply["base"] + generation.produced + 1
                yield generation.replay(token, probability, steps)
                if generation.finished:
                    return
            if reply["finish"] == "end_token":
                yield GenerateEvent(None, session.steps, "end_token")
                return
            try:
                logits = await (  # the prompt, unless a cut-off earlier try fed it
                    self._feed(session, ids)
                    if ids is not None and reply["base"] < 0
                    else self._current_logits(session)
                )
                if reply["base"] < 0:
                    reply["base"] = session.steps
                before_draw = rng.bit_generator.state
                token, probability = params.sample(logits, rng)
                if token == generation.end_token:
                    reply["finish"] = "end_token"
                    session.touch()
                    yield GenerateEvent(None, session.steps, "end_token")
                    return
                # From here the batcher advances this generation together with every other
                # one: one token per run, the next tokens sampled for all of them at once.
                generation.start(token, probability, before_draw)
                while not generation.finished:
                    events = await batcher.advance(generation)
                    self.stats.generated_tokens += sum(1 for e in events if e.token is not None)
                    for out in events:
                        reply["finish"] = out.finish_reason
                        yield out
            finally:
                # Cut off with a token sampled but not fed: as if it was never drawn.
                if generation.pending and generation.before_draw is not None:
                    rng.bit_generator.state = generation.before_draw
                # What a retry needs: the tokens fed and, with a seed of the call's own,
                # where its generator stands; then the session as it now is.
                reply["rng"] = dict(rng.bit_generator.state) if options.seed is not None else None
                session.last = LastCall(request_id, reply) if request_id else None
                await asyncio.shield(self.sessions.save(session))

    async def translate(
        self, model: Model, source: TokenInput, options: GenerateOptions, *, owner: str = ""
    ) -> tuple[list[GeneratedToken], str]:
        """Encode, decode until the end token or max_tokens; no session outlives the call."""
        if model.package.manifest.initial_state.kind != "encoder":
            raise FailedPrecondition(
                f"model {model.name} is not an encoder-decoder (its state starts from "
                f"{model.package.manifest.initial_state.kind}); Translate needs a seq2seq model"
            )
        if options.temperature is None:
            options = dataclasses.replace(options, temperature=0.0)
        self._checked_generation(model, options)
        session = await self.create_session(model, owner=owner, source=source)
        tokens: list[GeneratedToken] = []
        finish = "length"
        try:
            async for event in self.generate(session, NO_INPUT, options):
                if event.token is not None:
                    tokens.append(event.token)
                finish = event.finish_reason or finish
        finally:
            await self.sessions.close(session)
        return tokens, finish


def _logits_per_step(model: Model, ids: IntArray, state: FloatArray) -> list[FloatArray]:
    """The logits after every token of one sequence (worker thread)."""
    rows = []
    for token in ids:
        logits, state = model.runtime.step(token.reshape(1), state)
        rows.append(logits[0])
    return rows
