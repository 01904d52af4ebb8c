"""What every kind of call shares: the loaded models, the session store, the batchers
and the threads that run inference.

The call kinds are modules of their own over this (``lifecycle``, ``stepping``,
``generating``, ``conveniences``), composed by ``engine.Engine``; none of them knows any
transport. Inference runs on worker threads (or inline on the event loop when a run is
short, see ``batcher``); the session store and the state pools are touched only on the
event loop thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rnnserve_server import limits, outputs, tracing
from rnnserve_server.batcher import StepBatcher
from rnnserve_server.batchwork import StepInput, step_input
from rnnserve_server.chunks import ChunkBatcher
from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import FailedPrecondition, NotFound
from rnnserve_server.inputs import InputLimits, TokenInput, encode_input
from rnnserve_server.records import RedisRecords
from rnnserve_server.repository import Model, ReloadResult, Repository
from rnnserve_server.runtime import FloatArray, Inputs
from rnnserve_server.sampling import Described
from rnnserve_server.session import Session
from rnnserve_server.sessions import SessionStore
from rnnserve_server.statecodec import StateCodec
from rnnserve_server.stats import EngineStats

log = logging.getLogger(__name__)

FEED_CHUNK = 512  # inputs of a long sequence per run of the sequence graph
# Step graphs up to this size get their generation graph when their first session opens.
EAGER_GENERATION_BYTES = 32 << 20


class Core:
    def __init__(self, config: ServerConfig, repository: Repository) -> None:
        self.config = config
        self.repository = repository
        self.state_codec = StateCodec.from_config(config)
        self.store = SessionStore(
            max_sessions=config.max_sessions,
            max_sessions_per_owner=config.max_sessions_per_caller,
            default_idle_timeout_s=config.session_idle_timeout_s,
            max_idle_timeout_s=config.max_session_idle_timeout_s,
            records=(
                RedisRecords(
                    config.session_store,
                    connections=config.session_store_connections,
                    timeout_s=config.session_store_timeout_s,
                )
                if config.session_store
                else None
            ),
            resolve=self._model_of_record,
            codec=self.state_codec,
        )
        self.limits = limits.Limits(
            max_calls=config.max_calls_per_caller,
            tokens_per_s=config.caller_tokens_per_s,
            burst=config.caller_token_burst,
        )
        self.input_limits = InputLimits(config.max_tokens_per_request, config.max_text_chars)
        self.stats = EngineStats()
        # Two sets of threads: the batchers' runs (steps, chunks of generations) never
        # queue behind a long prompt or source (a sequence graph run, as long as its
        # tokens), so one caller's 4096-token prompts cannot hold up everybody's steps.
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rnnserve-infer")
        self._step_executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rnnserve-step")
        self.batchers: dict[Model, StepBatcher] = {}
        self.chunkers: dict[Model, asyncio.Future[ChunkBatcher | None]] = {}
        self.on_models_changed: Callable[[ReloadResult], Any] | None = None
        # One change of the repository at a time: rescans run on a worker thread.
        self._repository_changes = asyncio.Lock()

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        for task in self.chunkers.values():
            await self._close_chunker(task)
        for executor in (self._executor, self._step_executor):
            executor.shutdown(wait=False, cancel_futures=True)
        if self.store.records is not None:
            await self.store.records.close()

    @staticmethod
    def built(task: asyncio.Future[ChunkBatcher | None]) -> ChunkBatcher | None:
        """The chunked generation a finished build made (None: none, or not yet)."""
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return None

    @classmethod
    async def _close_chunker(cls, task: asyncio.Future[ChunkBatcher | None]) -> None:
        if not task.done():
            task.cancel()  # its graph, if still being built, is never used
        chunker = cls.built(task)
        if chunker is not None:
            await chunker.close()

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
        batcher = self.batchers.get(model)
        if batcher is None:
            max_batch, window_s = self._batching(model)
            batcher = self.batchers[model] = StepBatcher(
                model.runtime,
                lambda: self.store.pool(model),
                self._step_executor,
                max_batch=max_batch,
                window_s=window_s,
                inline_s=self.config.inline_run_us / 1e6,
                describe_rows=functools.partial(outputs.describe_rows, model),
                top_rows=functools.partial(outputs.top_rows, model),
            )
        return batcher

    def _batching(self, model: Model) -> tuple[int, float]:
        """A model's max_batch and batch window: its config.toml's, else the server's."""
        max_batch, window_us = model.config.batching(self.config)
        return max_batch, window_us / 1e6

    async def chunker(self, model: Model) -> ChunkBatcher | None:
        """The model's chunked generation; None with generate_chunk_tokens 0 or where
        the model has no generation graph (Generate then feeds token by token through
        ``batcher``). Its graph is built once, on a worker thread."""
        task = self.chunkers.get(model)
        if task is None:
            task = self.chunkers[model] = asyncio.ensure_future(self._chunker(model))
        # shielded: a caller that goes away does not cancel the build others wait for
        return await asyncio.shield(task)

    def prepare(self, model: Model) -> None:
        """When a session is created: start building the model's generation graph (if
        its step graph is small: a fraction of a second, a few copies of its weights),
        so that the first Generate rarely waits; a large model's waits for its first
        Generate."""
        if model not in self.chunkers and (
            model.package.graph_path("step").stat().st_size <= EAGER_GENERATION_BYTES
        ):
            self.chunkers[model] = asyncio.ensure_future(self._chunker(model))

    async def _chunker(self, model: Model) -> ChunkBatcher | None:
        steps = self.config.generate_chunk_tokens
        if not steps or model.package.manifest.output.kind != "vocabulary":
            return None
        graph = await self.infer(model.runtime.generation_graph, steps)
        if graph is None:
            return None
        return ChunkBatcher(
            model.runtime,
            graph,
            lambda: self.store.pool(model),
            self._step_executor,
            max_batch=self._batching(model)[0],
            inline_s=self.config.inline_run_us / 1e6,
        )

    async def infer(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on an inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def encode(self, model: Model, given: TokenInput, *, field: str) -> Inputs:
        """``inputs.encode_input`` under this server's limits; its steps are taken from
        the caller's budget (RESOURCE_EXHAUSTED if it lacks them)."""
        inputs = encode_input(model, given, field=field, limits=self.input_limits)
        limits.current().spend(len(inputs))
        return inputs

    # ------------------------------------------------------------------ repository

    async def reload(self) -> ReloadResult:
        """Rescan the model repository (loading graphs off the event loop)."""
        async with self._repository_changes:
            result: ReloadResult = await self.infer(self.repository.reload)
        await self._changed(result)
        return result

    async def load_model(self, name: str) -> ReloadResult:
        """Rescan one model's folder (LoadModel), bringing back what unload held."""
        async with self._repository_changes:
            result: ReloadResult = await self.infer(self.repository.load_model, name)
        await self._changed(result)
        return result

    async def unload_model(self, name: str, version: int = 0) -> tuple[list[str], int]:
        """Take a model (version 0: every version) out of service (UnloadModel); the
        versions removed, and how many sessions are still open on them (they go on)."""
        async with self._repository_changes:
            removed = self.repository.unload(name, version)
        await self._changed(ReloadResult(added=[], removed=removed, refused={}))
        gone = set(removed)
        still_open = [
            s for s in self.store.open_sessions() if f"{s.model.name}/{s.model.version}" in gone
        ]
        return removed, len(still_open)

    async def _changed(self, result: ReloadResult) -> None:
        """After a change of the loaded models: a changed config.toml applies to the
        running batchers at once; batchers of removed versions without sessions go."""
        for model, batcher in self.batchers.items():
            batcher.max_batch, batcher.window_s = self._batching(model)
        for model, building in self.chunkers.items():
            chunker = self.built(building)
            if chunker is not None:
                chunker.max_batch = self._batching(model)[0]
        for name in result.removed:
            stale = [m for m in self.batchers if f"{m.name}/{m.version}" == name]
            for model in stale:
                if not any(s.model is model for s in self.store.open_sessions()):
                    await self.batchers.pop(model).close()
                    task = self.chunkers.pop(model, None)
                    if task is not None:
                        await self._close_chunker(task)
        if self.on_models_changed is not None:
            self.on_models_changed(result)

    async def poll_repository(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:  # polling must survive any one bad scan
                log.exception("model repository poll failed")

    # ------------------------------------------------------------------ feeding

    async def feed(self, session: Session, inputs: Inputs) -> FloatArray:
        """Feed inputs (ids [T] or vectors [T, n_x]) to a session (its lock held); the
        output row after the last, [K + R] (``runtime.ModelRuntime``).

        One input joins the cross-session batch; several run on a worker thread (the
        sequence graph where the package has one), FEED_CHUNK inputs per run, the state
        carried from run to run: other callers' prompts queued meanwhile take their turns
        between the runs of a long one. Either way the state changes only when every
        input has been applied, so a cancelled or failed call leaves the session as it
        was.
        """
        session.ensure_open()
        with tracing.span("rnnserve.feed", inputs=len(inputs), batched=len(inputs) == 1):
            if len(inputs) == 1:
                return await self.batcher(session.model).feed(session, step_input(inputs))
            pool = self.store.pool(session.model)
            state = pool.gather([session.slot])
            run_inputs = session.model.runtime.run_inputs
            for start in range(0, len(inputs), FEED_CHUNK):
                chunk = inputs[start : start + FEED_CHUNK]
                rows, state = await self.infer(run_inputs, chunk, state)
            session.ensure_open()
            pool.scatter([session.slot], state)
            session.steps += len(inputs)
            return rows[0]  # type: ignore[no-any-return]

    async def step_described(self, session: Session, x: StepInput, k: int, full: bool) -> Described:
        """Feed one input through the batcher (its lock held); the top k of the output
        after it (and the distribution if ``full``), described with the whole batch."""
        with tracing.span("rnnserve.feed", inputs=1, batched=True):
            return await self.batcher(session.model).step(session, x, k, full)

    async def current_logits(self, session: Session) -> FloatArray:
        """The output row for the session's current state, without feeding anything,
        [K + R]; FAILED_PRECONDITION for a model without a head graph."""
        session.ensure_open()
        runtime = session.model.runtime
        state = self.store.pool(session.model).gather([session.slot])
        if runtime.step_seconds(1) <= self.config.inline_run_us / 1e6:
            # As short as a step (the head is the step graph's last part): on the loop,
            # which a hand-off to a worker thread and back would cost more than the run.
            return runtime.head(state)[0]  # type: ignore[no-any-return]
        logits = await self.infer(runtime.head, state)
        session.ensure_open()
        return logits[0]  # type: ignore[no-any-return]
