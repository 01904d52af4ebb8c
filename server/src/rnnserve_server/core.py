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

from rnnserve_server import limits, outputs
from rnnserve_server.batcher import StepBatcher
from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import FailedPrecondition, NotFound
from rnnserve_server.inputs import InputLimits, TokenInput, encode_input
from rnnserve_server.records import RedisRecords
from rnnserve_server.repository import Model, ReloadResult, Repository
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.session import Session
from rnnserve_server.sessions import SessionStore
from rnnserve_server.statecodec import StateCodec
from rnnserve_server.stats import EngineStats

log = logging.getLogger(__name__)

FEED_CHUNK = 512  # tokens of a long input per run of the sequence graph


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
        self._input_limits = InputLimits(config.max_tokens_per_request, config.max_text_chars)
        self.stats = EngineStats()
        # Two sets of threads: the batcher's runs of the step graph never queue behind a
        # long prompt or source (a sequence graph run, as long as its tokens), so one
        # caller's 4096-token prompts cannot hold up everybody's batched steps.
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rnnserve-infer")
        self._step_executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rnnserve-step")
        self.batchers: dict[Model, StepBatcher] = {}
        self.on_models_changed: Callable[[ReloadResult], Any] | None = None

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        for executor in (self._executor, self._step_executor):
            executor.shutdown(wait=False, cancel_futures=True)
        if self.store.records is not None:
            await self.store.records.close()

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
            batcher = self.batchers[model] = StepBatcher(
                model.runtime,
                lambda: self.store.pool(model),
                self._step_executor,
                max_batch=self.config.max_batch,
                window_s=self.config.batch_window_us / 1e6,
                inline_s=self.config.inline_run_us / 1e6,
                describe_rows=functools.partial(outputs.describe_rows, model),
                top_rows=functools.partial(outputs.top_rows, model),
            )
        return batcher

    async def infer(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on an inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def encode(self, model: Model, given: TokenInput, *, field: str) -> IntArray:
        """``inputs.encode_input`` under this server's limits; the tokens are taken from
        the caller's budget (RESOURCE_EXHAUSTED if it lacks them)."""
        ids = encode_input(model, given, field=field, limits=self._input_limits)
        limits.current().spend(len(ids))
        return ids

    # ------------------------------------------------------------------ repository

    async def reload(self) -> ReloadResult:
        """Rescan the model repository (loading graphs off the event loop)."""
        result: ReloadResult = await self.infer(self.repository.reload)
        for name in result.removed:
            stale = [m for m in self.batchers if f"{m.name}/{m.version}" == name]
            for model in stale:
                if not any(s.model is model for s in self.store.open_sessions()):
                    await self.batchers.pop(model).close()
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

    # ------------------------------------------------------------------ feeding

    async def feed(self, session: Session, ids: IntArray) -> FloatArray:
        """Feed tokens to a session (its lock held); the logits after the last, [K].

        One token joins the cross-session batch; several run on a worker thread (the
        sequence graph where the package has one), FEED_CHUNK tokens per run, the state
        carried from run to run: other callers' prompts queued meanwhile take their turns
        between the runs of a long one. Either way the state changes only when every
        token has been applied, so a cancelled or failed call leaves the session as it
        was.
        """
        session.ensure_open()
        if len(ids) == 1:
            return await self.batcher(session.model).feed(session, int(ids[0]))
        pool = self.store.pool(session.model)
        state = pool.gather([session.slot])
        run_tokens = session.model.runtime.run_tokens
        for start in range(0, len(ids), FEED_CHUNK):
            logits, state = await self.infer(run_tokens, ids[start : start + FEED_CHUNK], state)
        session.ensure_open()
        pool.scatter([session.slot], state)
        session.steps += len(ids)
        return logits[0]  # type: ignore[no-any-return]

    async def current_logits(self, session: Session) -> FloatArray:
        """The output for the session's current state, without feeding anything, [K]."""
        session.ensure_open()
        state = self.store.pool(session.model).gather([session.slot])
        logits = await self.infer(session.model.runtime.head, state)
        session.ensure_open()
        return logits[0]  # type: ignore[no-any-return]
